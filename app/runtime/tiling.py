"""Tiling as pure functions on arrays: plan a grid by cost, cut one tile, paste one tile.

A plan cuts an H x W image into a grid of tiles that all share one shape (so tiles of one
image batch together). Neighbouring tiles overlap by at least twice `overlap`; each output
pixel comes from the tile in which it lies farthest from a cut (only tile cores are
pasted), so every core keeps at least `overlap` LR pixels of real context at each inner cut.

Cost is the number of pixels fed to the model. For each axis the fewest tiles that respect
the side bound waste the least on overlap, and the two axes multiply, so the cheapest grid
is the per-axis minimum; `min_tiles` asks for a finer grid (to spread a lone image over
idle workers) at the least extra cost. An image that fits is one tile of its own size.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np

# Largest cost, relative to the cheapest grid, worth paying to spread one image over idle
# workers: well under the 1.3-2x that a second worker gives.
SPREAD_COST = 1.10


@dataclass(frozen=True)
class Span:
    start: int  # first input index of the tile
    core_lo: int  # first input index this tile owns
    core_hi: int  # one past the last index it owns


def axis_tile_len(length: int, count: int, overlap: int, multiple: int = 1) -> int:
    """Shortest tile side that covers `length` with `count` tiles overlapping by 2*overlap."""
    side = -(-(length + 2 * overlap * (count - 1)) // count)
    return -(-side // multiple) * multiple


def plan_axis(length: int, count: int, tile_len: int) -> list[Span]:
    """`count` tiles of `tile_len` along an axis, evenly spread, cut halfway in each overlap.

    A tile longer than the axis (one tile, side rounded up) starts at 0 and is padded.
    """
    if count == 1:
        return [Span(0, 0, length)]
    room = length - tile_len
    starts = [room * k // (count - 1) for k in range(count)]
    cuts = [(starts[k + 1] + starts[k] + tile_len) // 2 for k in range(count - 1)]
    bounds = [0, *cuts, length]
    return [Span(s, bounds[k], bounds[k + 1]) for k, s in enumerate(starts)]


def min_count(length: int, max_side: int, overlap: int, multiple: int = 1) -> int:
    """Fewest tiles along an axis whose shared side stays within `max_side`."""
    count = max(1, math.ceil((length - 2 * overlap) / (max_side - 2 * overlap)))
    while axis_tile_len(length, count, overlap, multiple) > max_side:
        count += 1
    return count


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile_h: int
    tile_w: int
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def shape(self) -> tuple[int, int]:
        return self.tile_h, self.tile_w

    @property
    def model_pixels(self) -> int:
        return self.count * self.tile_h * self.tile_w

    @property
    def overhead(self) -> float:
        """Model pixels per image pixel: 1.0 is no waste."""
        return self.model_pixels / (self.height * self.width)

    def tiles(self) -> itertools.product:
        """(row, col) indices, row-major: rows of output complete in order."""
        return itertools.product(range(len(self.rows)), range(len(self.cols)))


def plan_to_dict(plan: TilePlan) -> dict:
    """A plan as JSON can hold it (a job stores the plan it was accepted with)."""
    return dataclasses.asdict(plan)


def plan_from_dict(d: dict) -> TilePlan:
    return TilePlan(d["height"], d["width"], d["tile_h"], d["tile_w"],
                    tuple(Span(**s) for s in d["rows"]), tuple(Span(**s) for s in d["cols"]))


def stacked(plan: TilePlan, count: int) -> TilePlan:
    """The plan of `count` images of one size stacked top to bottom, each tiled by `plan`
    (a batch of tensors as one unit of work: its count and cost are the batch's; tiles are
    cut from each image by its own plan)."""
    h = plan.height
    rows = tuple(Span(s.start + k * h, s.core_lo + k * h, s.core_hi + k * h)
                 for k in range(count) for s in plan.rows)
    return TilePlan(h * count, plan.width, plan.tile_h, plan.tile_w, rows, plan.cols)


def transposed(plan: TilePlan) -> TilePlan:
    """The plan of the image turned by 90 degrees: rows become columns, same tiles."""
    return TilePlan(plan.width, plan.height, plan.tile_w, plan.tile_h, plan.cols, plan.rows)


def plan_tiles(height: int, width: int, tile_size: int, overlap: int, min_tiles: int = 1,
               multiple: int = 1) -> TilePlan:
    """The grid with the fewest model pixels whose tiles stay within tile_size + 2*overlap
    on each side, with at least `min_tiles` tiles where the image is big enough for them
    (every core keeps at least `overlap` pixels along each cut axis)."""
    if tile_size < 1 or overlap < 0:
        raise ValueError("tile_size must be positive and overlap non-negative")
    bound = tile_size + 2 * overlap
    base_r = min_count(height, bound, overlap, multiple)
    base_c = min_count(width, bound, overlap, multiple)
    if base_r * base_c >= min_tiles:
        min_tiles = 1  # enough tiles already: the cheapest grid is the plan
    options = []
    for nr in range(base_r, max(base_r, min_tiles) + 1):
        for nc in range(base_c, max(base_c, min_tiles) + 1):
            th = axis_tile_len(height, nr, overlap, multiple)
            tw = axis_tile_len(width, nc, overlap, multiple)
            rows, cols = plan_axis(height, nr, th), plan_axis(width, nc, tw)
            if (nr, nc) == (base_r, base_c) or (
                    nr * nc >= min_tiles and _sound(rows, th, overlap)
                    and _sound(cols, tw, overlap)):
                options.append((nr * nc * th * tw, th, tw, rows, cols))
    base = options[0]  # the fewest tiles: the cheapest grid
    spread = min((o for o in options[1:]), key=lambda o: o[0], default=base)
    # Spreading pays only while its extra overlap costs less than the idle worker gives.
    _, th, tw, rows, cols = spread if spread[0] <= SPREAD_COST * base[0] else base
    return TilePlan(height, width, th, tw, tuple(rows), tuple(cols))


def _sound(spans: list[Span], tile_len: int, overlap: int) -> bool:
    """Tiles inside the axis, every core non-empty, `overlap` context at inner cuts."""
    last = len(spans) - 1
    return all(s.start >= 0 and s.core_lo < s.core_hi
               and s.core_lo - s.start >= (overlap if k else 0)
               and s.start + tile_len - s.core_hi >= (overlap if k < last else 0)
               for k, s in enumerate(spans))


def cut(plane: np.ndarray, plan: TilePlan, r: int, c: int) -> np.ndarray:
    """One tile of an H x W (x C) array, mirror-padded at the bottom/right where the tile is longer
    than the image (half-sample mirror, numpy's "symmetric": measured closest to whole-image
    inference among reflect, edge and zeros)."""
    rs, cs = plan.rows[r], plan.cols[c]
    part = plane[rs.start : rs.start + plan.tile_h, cs.start : cs.start + plan.tile_w]
    ph, pw = plan.tile_h - part.shape[0], plan.tile_w - part.shape[1]
    if ph or pw:
        part = np.pad(part, ((0, ph), (0, pw)) + ((0, 0),) * (part.ndim - 2), mode="symmetric")
    return part


def paste(out: np.ndarray, tile: np.ndarray, plan: TilePlan, r: int, c: int, scale: int,
          row_offset: int = 0) -> None:
    """Paste the core of one upscaled tile into `out`, whose first row is output row
    `row_offset` (a band of the output, or the whole of it)."""
    s, rs, cs = scale, plan.rows[r], plan.cols[c]
    y0, y1 = (rs.core_lo - rs.start) * s, (rs.core_hi - rs.start) * s
    x0, x1 = (cs.core_lo - cs.start) * s, (cs.core_hi - cs.start) * s
    out[rs.core_lo * s - row_offset : rs.core_hi * s - row_offset,
        cs.core_lo * s : cs.core_hi * s] = tile[y0:y1, x0:x1]


def cut_tiles(plane: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Every tile at once as [N, 1, th, tw] (benchmarks and tests; the service cuts lazily)."""
    return np.stack([cut(plane, plan, r, c)[None] for r, c in plan.tiles()]).astype(np.float32)


def merge_tiles(tiles: np.ndarray, plan: TilePlan, scale: int) -> np.ndarray:
    """Paste every upscaled tile's core into a (scale*H) x (scale*W) float32 plane."""
    out = np.empty((plan.height * scale, plan.width * scale), np.float32)
    for k, (r, c) in enumerate(plan.tiles()):
        paste(out, tiles[k, 0], plan, r, c, scale)
    return out
