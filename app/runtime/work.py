"""What the scheduler deals in: a unit of tile work, the cost model that prices it, a
batch's record, and the ways work is refused or fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from app.runtime.tiling import TilePlan

SYNC, BACKGROUND = 0, 1  # job priorities: lower goes first


class TooLarge(Exception):
    """The request alone cannot finish within the deadline (`reason` too_slow, with the
    largest square input side that can), or has too many tiles (too_many_tiles) (413)."""

    def __init__(self, message: str, reason: str = "too_many_tiles",
                 largest_side: int | None = None) -> None:
        super().__init__(message)
        self.reason, self.largest_side = reason, largest_side


class Busy(Exception):
    """The queued work plus this request would pass a deadline: retry later (503)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request's deadline passed before its tiles were done (504)."""


class BatchFailed(Exception):
    """The model call for a batch holding this request's tiles failed (500)."""


@dataclass
class CostModel:
    """Worker seconds of a tile of h x w: a cost per call, per pixel, and per line.

    The LSTMs step along every row and every column, so a tile also costs in proportion to
    h + w; without that term a thin strip (1 x 184 tiles) looks 10-100x dearer per pixel
    than a square tile, and one such request would poison the estimate of every other.
    The three coefficients come from warm-up; recent batches move one `factor` (observed
    over predicted, smoothed), which follows the load on the machine as it is now.
    """

    per_pixel_s: float
    per_line_s: float = 0.0
    per_call_s: float = 0.0
    factor: float = 1.0
    smoothing: float = 0.1

    def tile(self, h: int, w: int) -> float:
        """Predicted seconds of one tile, before the learned factor."""
        return self.per_call_s + self.per_pixel_s * h * w + self.per_line_s * (h + w)

    def seconds(self, h: int, w: int, tiles: int) -> float:
        return self.factor * tiles * self.tile(h, w)

    def estimate(self, plan: TilePlan) -> float:
        return self.seconds(plan.tile_h, plan.tile_w, plan.count)

    def observe(self, h: int, w: int, tiles: int, seconds: float) -> None:
        predicted = tiles * self.tile(h, w)
        if predicted > 0 and seconds > 0:
            # Bounded around the current factor: one outlier moves it little, yet a machine
            # that got much slower (other work on its cores) is followed all the way.
            ratio = min(max(seconds / predicted, self.factor / 4), self.factor * 4)
            self.factor += self.smoothing * (ratio - self.factor)

    @classmethod
    def fit(cls, samples: list[tuple[int, int, float]]) -> CostModel:
        """Least squares over (h, w, seconds) of single tiles; coefficients kept >= 0."""
        a = np.array([[1.0, h * w, h + w] for h, w, _ in samples])
        t = np.array([sec for _, _, sec in samples])
        call, pixel, line = np.linalg.lstsq(a, t, rcond=None)[0]
        if min(call, pixel, line) < 0:  # refit the pixel term alone, the one that matters
            pixel = float(np.dot(a[:, 1], t) / np.dot(a[:, 1], a[:, 1]))
            call = line = 0.0
        return cls(per_pixel_s=max(float(pixel), 1e-12), per_line_s=float(line),
                   per_call_s=float(call))


@dataclass(eq=False)
class TileWork:
    """One request's tiles: what is left to run, what is done, and what it cost."""

    plan: TilePlan
    deadline: float  # loop time
    cut: Callable[[int, int], np.ndarray] | None = None  # (row, col) -> [th, tw] tile
    paste: Callable[[int, int, np.ndarray], None] | None = None  # (row, col, output tile)
    done_future: asyncio.Future | None = None
    pending: Iterator[tuple[int, int]] | None = None
    issued: int = 0
    done: int = 0
    model_s: float = 0.0  # worker seconds spent on its tiles
    started_at: float | None = None  # when its first tile began
    cancelled: bool = False
    error: BaseException | None = None
    tag: str = ""  # the request id, for logs
    priority: int = SYNC

    @property
    def total(self) -> int:
        return self.plan.count

    @property
    def waiting(self) -> int:
        """Tiles not yet handed to a worker."""
        return self.total - self.issued


@dataclass
class BatchRecord:
    batch_id: int
    size: int  # tiles of requests (padding excluded)
    padded: int  # tiles in the model call
    jobs: int
    seconds: float  # worker seconds: cut, model call, paste
    cancelled_s: float  # the share of tiles whose job was withdrawn while they ran
