"""Tiling arithmetic and merge, with no model: a nearest-neighbour 'model' must round-trip."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from app.tiling import cut_tiles, merge_tiles, plan_axis, plan_tiles


@pytest.mark.parametrize("length", [1, 2, 17, 95, 96, 97, 150, 300, 1001])
@pytest.mark.parametrize(("tile", "overlap"), [(96, 12), (64, 8), (32, 0)])
def test_cores_cover_each_pixel_once_with_context(length: int, tile: int, overlap: int) -> None:
    spans = plan_axis(length, tile, overlap)
    assert spans[0].core_lo == 0 and spans[-1].core_hi == length
    for a, b in itertools.pairwise(spans):
        assert a.core_hi == b.core_lo  # contiguous, no gap, no double
    for k, s in enumerate(spans):
        assert s.start <= s.core_lo < s.core_hi <= s.start + tile
        if length >= tile:
            assert s.start + tile <= length  # tiles stay inside the image when it is big enough
        if k > 0:
            assert s.core_lo - s.start >= overlap  # context before an inner cut
        if k < len(spans) - 1:
            assert s.start + tile - s.core_hi >= overlap  # context after an inner cut


def test_tile_must_exceed_twice_the_overlap() -> None:
    with pytest.raises(ValueError):
        plan_axis(100, 16, 8)


def _nearest(tiles: np.ndarray, scale: int) -> np.ndarray:
    return tiles.repeat(scale, axis=2).repeat(scale, axis=3)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 40), (96, 96), (130, 250), (301, 97)])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_merge_of_a_pointwise_model_equals_the_whole_image(h: int, w: int, scale: int) -> None:
    plane = np.random.default_rng(h * w).random((h, w), dtype=np.float32)
    plan = plan_tiles(h, w, 48, 6)
    tiles = cut_tiles(plane, plan)
    assert tiles.shape == (plan.count, 1, 48, 48)  # one shape, however small the image
    merged = merge_tiles(_nearest(tiles, scale), plan, scale)
    np.testing.assert_array_equal(merged, plane.repeat(scale, 0).repeat(scale, 1))


def test_small_images_are_mirror_padded() -> None:
    plane = np.arange(12, dtype=np.float32).reshape(3, 4)
    tiles = cut_tiles(plane, plan_tiles(3, 4, 8, 2))
    np.testing.assert_array_equal(tiles[0, 0, :3, :4], plane)
    np.testing.assert_array_equal(tiles[0, 0, 3, :4], plane[2])  # mirrored, not zeros
    np.testing.assert_array_equal(tiles[0, 0, 4, :4], plane[1])
    np.testing.assert_array_equal(tiles[0, 0, :3, 4], plane[:, 3])
    np.testing.assert_array_equal(tiles[0, 0, :3, 5], plane[:, 2])
