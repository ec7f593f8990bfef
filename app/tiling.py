"""Tiling as pure functions on arrays: plan tiles, cut them (padding edges), merge tile cores.

Every tile has the same T x T shape so tiles of any image batch together; an image smaller
than a tile is mirror-padded at its bottom/right. Tiles overlap;
each output pixel comes from the tile in which it lies farthest from a cut edge (only tile
cores are pasted), so each core keeps at least `overlap` LR pixels of real context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    start: int  # first input index of the tile
    core_lo: int  # first input index this tile owns
    core_hi: int  # one past the last index it owns


def plan_axis(length: int, tile: int, overlap: int) -> list[Span]:
    """Tiles along one axis of `length` pixels. A short axis gets one (padded) tile."""
    if tile <= 2 * overlap:
        raise ValueError(f"tile {tile} must exceed twice the overlap {overlap}")
    if length <= tile:
        return [Span(0, 0, length)]
    stride = tile - 2 * overlap
    starts = [*list(range(0, length - tile, stride)), length - tile]
    # Cut halfway through each overlap: both neighbours keep context on that side.
    cuts = [(starts[k + 1] + starts[k] + tile) // 2 for k in range(len(starts) - 1)]
    bounds = [0, *cuts, length]
    return [Span(s, bounds[k], bounds[k + 1]) for k, s in enumerate(starts)]


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile: int
    rows: list[Span]
    cols: list[Span]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> TilePlan:
    return TilePlan(height, width, tile, plan_axis(height, tile, overlap),
                    plan_axis(width, tile, overlap))


def _pad_to(plane: np.ndarray, tile: int) -> np.ndarray:
    """Mirror-pad a plane smaller than the tile at its bottom/right up to tile size.

    Half-sample mirroring (numpy's "symmetric": the edge pixel repeats, then the image
    reflects) measured closest to whole-image inference: worst Set5/Set14 image loss at x4
    0.033 dB, against 0.067 for "reflect", 0.068 for "edge" and 0.46 for zeros.
    """
    ph, pw = max(0, tile - plane.shape[0]), max(0, tile - plane.shape[1])
    if ph == 0 and pw == 0:
        return plane
    return np.pad(plane, ((0, ph), (0, pw)), mode="symmetric")


def cut_tiles(plane: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Tiles of an H x W plane as an [N, 1, T, T] float32 array, row-major."""
    padded = _pad_to(plane.astype(np.float32, copy=False), plan.tile)
    t = plan.tile
    out = np.empty((plan.count, 1, t, t), np.float32)
    k = 0
    for r in plan.rows:
        for c in plan.cols:
            out[k, 0] = padded[r.start : r.start + t, c.start : c.start + t]
            k += 1
    return out


def merge_tiles(tiles: np.ndarray, plan: TilePlan, scale: int) -> np.ndarray:
    """Paste each upscaled tile's core into a (scale*H) x (scale*W) float32 plane."""
    s = scale
    out = np.empty((plan.height * s, plan.width * s), np.float32)
    k = 0
    for r in plan.rows:
        for c in plan.cols:
            y0, y1 = (r.core_lo - r.start) * s, (r.core_hi - r.start) * s
            x0, x1 = (c.core_lo - c.start) * s, (c.core_hi - c.start) * s
            out[r.core_lo * s : r.core_hi * s, c.core_lo * s : c.core_hi * s] = \
                tiles[k, 0, y0:y1, x0:x1]
            k += 1
    return out
