"""Tiling arithmetic with no model: plans by cost, exact coverage, bounds, lossless merge."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from app.runtime.tiling import TilePlan, cut, cut_tiles, merge_tiles, paste, plan_tiles


def _random_sizes(n: int, seed: int = 7) -> list[tuple[int, int]]:
    """Sizes from 1xN strips to 5000x5000, log-uniform on each side, plus the edge cases."""
    rng = np.random.default_rng(seed)
    sides = np.exp(rng.uniform(0, np.log(5000), (n, 2))).astype(int)
    edge = [(1, 1), (1, 5000), (5000, 1), (2, 3), (183, 184), (184, 185), (5000, 5000),
            (2000, 2000), (256, 256), (1, 200_000)]
    return edge + [(int(h), int(w)) for h, w in sides]


def _check_axis(spans: tuple, length: int, tile_len: int, overlap: int) -> None:
    assert spans[0].core_lo == 0 and spans[-1].core_hi == length
    for a, b in itertools.pairwise(spans):
        assert a.core_hi == b.core_lo  # contiguous: no gap, no pixel twice
    for k, s in enumerate(spans):
        assert s.start <= s.core_lo < s.core_hi <= s.start + tile_len
        if len(spans) > 1:
            assert s.start + tile_len <= length  # cut tiles stay inside the image
        if k > 0:
            assert s.core_lo - s.start >= overlap  # context before an inner cut
        if k < len(spans) - 1:
            assert s.start + tile_len - s.core_hi >= overlap  # and after it


@pytest.mark.parametrize(("tile_size", "overlap", "min_tiles"),
                         [(176, 4, 1), (176, 4, 2), (48, 8, 1), (64, 0, 3), (32, 6, 2)])
def test_every_output_pixel_is_pasted_exactly_once(tile_size: int, overlap: int,
                                                   min_tiles: int) -> None:
    bound = tile_size + 2 * overlap
    for h, w in _random_sizes(150):
        plan = plan_tiles(h, w, tile_size, overlap, min_tiles)
        assert plan.tile_h <= max(bound, 1) and plan.tile_w <= bound  # never past the bound
        assert plan.tile_h <= h and plan.tile_w <= w  # an image that fits is its own size
        _check_axis(plan.rows, h, plan.tile_h, overlap)
        _check_axis(plan.cols, w, plan.tile_w, overlap)
        covered = np.zeros(h * w if h * w <= 4_000_000 else 0, np.int8)
        if covered.size:
            covered = covered.reshape(h, w)
            for r, c in plan.tiles():
                rs, cs = plan.rows[r], plan.cols[c]
                covered[rs.core_lo : rs.core_hi, cs.core_lo : cs.core_hi] += 1
            assert (covered == 1).all()


def test_overhead_within_target_at_the_defaults() -> None:
    """Model pixels / image pixels: at most 1.15 anywhere, 1.10 for 2000x2000."""
    for h, w in _random_sizes(300, seed=11):
        for min_tiles in (1, 2):
            assert plan_tiles(h, w, 176, 4, min_tiles).overhead <= 1.15, (h, w, min_tiles)
    assert plan_tiles(2000, 2000, 176, 4).overhead <= 1.10
    assert plan_tiles(4000, 4000, 176, 4).overhead <= 1.10


def test_the_plan_is_the_cheapest_grid() -> None:
    """Against brute force over every grid and tile shape that respects the bound."""
    from app.runtime.tiling import axis_tile_len

    for h, w in [(300, 500), (185, 90), (1000, 37), (368, 368)]:
        plan = plan_tiles(h, w, 64, 4)
        best = min(nr * nc * axis_tile_len(h, nr, 4) * axis_tile_len(w, nc, 4)
                   for nr in range(1, 40) for nc in range(1, 40)
                   if axis_tile_len(h, nr, 4) <= 72 and axis_tile_len(w, nc, 4) <= 72)
        assert plan.model_pixels == best


def test_an_image_that_fits_is_one_tile_of_its_size_unless_spread() -> None:
    plan = plan_tiles(120, 90, 176, 4)
    assert plan.count == 1 and plan.shape == (120, 90) and plan.overhead == 1.0
    spread = plan_tiles(120, 90, 176, 4, min_tiles=2)
    assert spread.count == 2 and spread.overhead < 1.1
    assert plan_tiles(5, 3, 176, 4, min_tiles=2).count == 1  # too small to cut: stays whole


def test_thin_strips_are_cut_only_along_their_length() -> None:
    plan = plan_tiles(1, 200_000, 176, 4)
    assert plan.tile_h == 1 and len(plan.rows) == 1 and plan.overhead < 1.06


def test_rounding_to_a_multiple_pads_small_images() -> None:
    plan = plan_tiles(30, 50, 176, 4, multiple=32)
    assert plan.shape == (32, 64)
    plane = np.arange(30 * 50, dtype=np.float32).reshape(30, 50)
    tile = cut(plane, plan, 0, 0)
    assert tile.shape == (32, 64)
    np.testing.assert_array_equal(tile[:30, :50], plane)
    np.testing.assert_array_equal(tile[30, :50], plane[29])  # mirrored, not zeros
    np.testing.assert_array_equal(tile[31, :50], plane[28])


def _nearest(tiles: np.ndarray, scale: int) -> np.ndarray:
    return tiles.repeat(scale, axis=2).repeat(scale, axis=3)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 40), (96, 96), (130, 250), (301, 97)])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_merge_of_a_pointwise_model_equals_the_whole_image(h: int, w: int, scale: int) -> None:
    plane = np.random.default_rng(h * w).random((h, w), dtype=np.float32)
    plan = plan_tiles(h, w, 40, 6, min_tiles=2)
    tiles = cut_tiles(plane, plan)
    assert tiles.shape == (plan.count, 1, plan.tile_h, plan.tile_w)
    merged = merge_tiles(_nearest(tiles, scale), plan, scale)
    np.testing.assert_array_equal(merged, plane.repeat(scale, 0).repeat(scale, 1))


def test_paste_into_a_band_with_row_offset() -> None:
    plan: TilePlan = plan_tiles(100, 60, 30, 4)
    plane = np.random.default_rng(0).random((100, 60), dtype=np.float32)
    rs = plan.rows[1]
    band = np.zeros(((rs.core_hi - rs.core_lo) * 2, 120), np.float32)
    for c in range(len(plan.cols)):
        tile = cut(plane, plan, 1, c)
        paste(band, tile.repeat(2, 0).repeat(2, 1), plan, 1, c, 2, row_offset=rs.core_lo * 2)
    np.testing.assert_array_equal(band, plane[rs.core_lo : rs.core_hi].repeat(2, 0).repeat(2, 1))
