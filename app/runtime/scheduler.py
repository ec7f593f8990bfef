"""Cost-aware scheduling of tiles: admission in seconds of work, fair turns, cancellation.

One scheduler per model. A request's (or a background job's) tiles are admitted as one
`TileWork` only if its estimated model time
(from its tile plan and a per-pixel rate learned from recent batches) fits its deadline
with every admitted job still meeting its own (Triton's bounded queue with REJECT, counted
in seconds, not items: one thin image can be a thousand tiles). Admitted jobs are served in
fair turns (round robin, one tile a turn; a newly arrived job takes the next turn, as the
sparse-flow rule of fq_codel does), so a big image cannot hold everyone else. Tiles are cut
lazily, at most one batch per free worker, in the worker thread that runs them, and pasted
straight into their job's output there. A job whose waiter goes away (client disconnect,
deadline) is withdrawn: its tiles not yet started are never run.

Priorities: background jobs (the jobs API, priority 1) take a turn only when no synchronous
job (priority 0) has a tile waiting, so a request waits for at most the background tiles
already running. Synchronous admission counts only synchronous work plus those tiles;
background jobs have no deadline and their own admission (the spool's), not this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.runtime.tiling import Span, TilePlan

log = logging.getLogger("app.runtime.scheduler")


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


@dataclass
class Scheduler:
    model: Callable[[np.ndarray], np.ndarray]  # blocking model call, [N,1,h,w] -> [N,1,sh,sw]
    cost: CostModel
    workers: int = 1
    max_batch: int = 1
    batch_sizes: tuple[int, ...] = ()  # pad batches up to these sizes (GPU); () = no padding
    max_tiles: int = 4096  # per request
    queue_limit: int = 2048  # tiles waiting in all, beside the limit in seconds
    timeout_s: float = 60.0  # the service's request deadline
    headroom: float = 0.8  # share of a deadline the model work may fill
    name: str = "model"
    on_batch: Callable[[BatchRecord], None] = lambda record: None
    on_withdraw: Callable[[TileWork], None] = lambda job: None  # waiting tiles dropped
    planner: Callable[[int, int], TilePlan] = lambda h, w: TilePlan(  # (h, w) -> its plan
        h, w, h, w, (Span(0, 0, h),), (Span(0, 0, w),))

    def __post_init__(self) -> None:
        self._ring: deque[TileWork] = deque()  # admitted jobs with tiles waiting, in turn order
        self._jobs: set[TileWork] = set()  # admitted, not finished
        self._busy = 0  # workers running a batch
        self._batches = 0
        self._tasks: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=f"infer-{self.name}")
        self._closed = False

    # -- what the queue holds ------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Any admitted work not finished."""
        return bool(self._jobs) or self._busy > 0

    def _sync_jobs(self) -> list[TileWork]:
        return [job for job in self._jobs if job.priority == SYNC]

    @property
    def waiting_tiles(self) -> int:
        """Synchronous tiles not started (what a new request queues behind)."""
        return sum(job.waiting for job in self._sync_jobs())

    def remaining_s(self, job: TileWork) -> float:
        """Worker seconds left for a job: its tiles not done, at the current rate."""
        return self.cost.seconds(job.plan.tile_h, job.plan.tile_w, job.total - job.done)

    @property
    def work_s(self) -> float:
        """Worker seconds of the admitted synchronous work not done yet."""
        return sum(self.remaining_s(job) for job in self._sync_jobs())

    @property
    def background_s(self) -> float:
        """Worker seconds of the admitted background work not done yet."""
        return sum(self.remaining_s(job) for job in self._jobs if job.priority != SYNC)

    def _background_running_s(self) -> float:
        """Wall seconds until the background tiles now running are done, at worst: a
        synchronous tile waits for nothing more."""
        return sum(self.cost.seconds(job.plan.tile_h, job.plan.tile_w, job.issued - job.done)
                   for job in self._jobs if job.priority != SYNC) / self.workers

    @property
    def drain_s(self) -> float:
        """Wall seconds until the admitted work is done, all workers busy."""
        return self.work_s / self.workers

    def refuse_early(self) -> None:
        """Busy at once, before a body is read, when the admitted work alone already fills
        the deadline: no request, however small, could be admitted now."""
        if self._closed:
            raise Busy("shutting down", 5)
        if self.drain_s >= self.headroom * self.timeout_s:
            raise Busy(f"about {self.drain_s:.1f} s of work queued", self._retry_after())

    def free_workers(self) -> int:
        """Workers that no admitted tile is waiting for: a new job may spread over them."""
        return max(0, self.workers - self._busy - self.waiting_tiles)

    # -- admission -----------------------------------------------------------------------

    def largest_side(self) -> int:
        """Side of the largest square input that one request alone can have done within
        the deadline, by the current estimate and the real tile planner."""
        lo, hi = 1, 1 << 16
        while lo < hi:
            mid = (lo + hi + 1) // 2
            plan = self.planner(mid, mid)
            if self.cost.estimate(plan) / min(self.workers, plan.count) <= \
                    self.headroom * self.timeout_s:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def check_tiles(self, plan: TilePlan) -> None:
        """TooLarge when one request's plan has more tiles than allowed: a guard on the
        estimate, whatever the queue holds."""
        if plan.count > self.max_tiles:
            raise TooLarge(f"the image needs {plan.count} tiles; the limit per request is "
                           f"{self.max_tiles}")

    def admit(self, plan: TilePlan, deadline: float, tag: str = "",
              priority: int = SYNC) -> TileWork:
        """Reserve the work of a plan, or refuse it at once (TooLarge, Busy). Background
        jobs are refused only for their tile count or a closed scheduler."""
        if self._closed:
            raise Busy("shutting down", 5)
        self.check_tiles(plan)
        if priority != SYNC:
            job = TileWork(plan, deadline, tag=tag, priority=priority)
            self._jobs.add(job)
            return job
        now = asyncio.get_running_loop().time()
        need = self.cost.estimate(plan)
        alone = need / min(self.workers, plan.count)
        if alone > self.headroom * self.timeout_s:
            side = self.largest_side()
            raise TooLarge(f"the image needs about {alone:.0f} s of model time, over the "
                           f"{self.timeout_s:.0f} s deadline; the largest input that can "
                           f"finish is about {side}x{side} pixels", "too_slow", side)
        if self.waiting_tiles + plan.count > self.queue_limit:
            raise Busy(f"{self.waiting_tiles} tiles queued; the limit is {self.queue_limit}",
                       self._retry_after())
        job = TileWork(plan, deadline, tag=tag)
        if not self._all_meet_deadlines(job, need, now):
            raise Busy(f"about {self.drain_s:.1f} s of work queued; this request would not "
                       f"finish within its deadline", self._retry_after())
        self._jobs.add(job)
        return job

    def _all_meet_deadlines(self, new: TileWork, need: float, now: float) -> bool:
        """Under fair sharing, would the new job and every admitted one still finish in time?

        With processor sharing over W workers, a job with r seconds left finishes once every
        job has received min(r_k, r) seconds: F = sum_k min(r_k, r) / W. A job that would
        miss its deadline even without the new one does not block admission.
        """
        work = [(self.remaining_s(job), job.deadline) for job in self._sync_jobs()]
        rest = [r for r, _ in work]
        lag = self._background_running_s()

        def finish(r: float, others: list[float]) -> float:
            return lag + (r + sum(min(o, r) for o in others)) / self.workers

        if finish(need, rest) > self.headroom * (new.deadline - now):
            return False
        for k, (r, deadline) in enumerate(work):
            others = rest[:k] + rest[k + 1 :]
            budget = self.headroom * (deadline - now)
            if finish(r, [*others, need]) > budget >= finish(r, others):
                return False
        return True

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.drain_s))

    def release(self, job: TileWork) -> None:
        """Forget a job: finished, failed or withdrawn. Idempotent."""
        self._jobs.discard(job)
        with contextlib.suppress(ValueError):
            self._ring.remove(job)

    # -- running -------------------------------------------------------------------------

    async def run(self, job: TileWork, cut: Callable[[int, int], np.ndarray],
                  paste: Callable[[int, int, np.ndarray], None]) -> TileWork:
        """Run an admitted job's tiles in fair turns; return when all are pasted.

        Cancellation (the client left) and the deadline withdraw its waiting tiles.
        """
        loop = asyncio.get_running_loop()
        job.cut, job.paste = cut, paste
        job.pending = iter(job.plan.tiles())
        job.done_future = loop.create_future()
        self._ring.appendleft(job)  # a new job takes the next turn
        self._dispatch()
        try:
            async with asyncio.timeout_at(None if math.isinf(job.deadline) else job.deadline):
                await asyncio.shield(job.done_future)
        except TimeoutError as err:
            raise DeadlineExceeded("request deadline passed") from err
        finally:
            if not job.done_future.done():  # withdrawn: the client left, or the deadline
                job.cancelled = True
                self.on_withdraw(job)
            self.release(job)
        if isinstance(job.error, Busy):
            raise job.error
        if job.error is not None:
            raise BatchFailed("inference failed") from job.error
        return job

    def _take_batch(self) -> list[tuple[TileWork, int, int]]:
        """Up to max_batch tiles of one shape, one per job per turn, starting at the first
        job of the most urgent priority that has tiles waiting."""
        top = min(job.priority for job in self._ring)
        head = next(job for job in self._ring if job.priority == top)
        shape = head.plan.shape
        batch: list[tuple[TileWork, int, int]] = []
        served: list[TileWork] = []
        while len(batch) < self.max_batch:
            progressed = False
            for job in list(self._ring):
                if len(batch) >= self.max_batch:
                    break
                if job.priority != top or job.plan.shape != shape or job.waiting == 0:
                    continue
                assert job.pending is not None
                r, c = next(job.pending)
                job.issued += 1
                batch.append((job, r, c))
                progressed = True
                if job not in served:
                    served.append(job)
            if not progressed:
                break
        for job in served:  # their turn is used: to the back of the ring, or out of it
            self._ring.remove(job)
            if job.waiting:
                self._ring.append(job)
        return batch

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._busy < self.workers and self._ring and not self._closed:
            batch = self._take_batch()
            if not batch:
                break
            self._busy += 1
            self._batches += 1
            task = loop.create_task(self._execute(self._batches, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _work(self, batch: list[tuple[TileWork, int, int]]) -> tuple[float, float]:
        """In a worker thread: cut the tiles, run the model, paste each output."""
        t0 = time.perf_counter()
        x = np.stack([job.cut(r, c)[None] for job, r, c in batch]).astype(np.float32,
                                                                           copy=False)
        size = next((b for b in self.batch_sizes if b >= len(x)), len(x))
        if size > len(x):  # pad to a size that warm-up covered
            x = np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])
        y = self.model(x)
        if len(y) != len(x):
            raise BatchFailed(f"model returned {len(y)} outputs for {len(x)} tiles")
        for k, (job, r, c) in enumerate(batch):
            if not job.cancelled and job.paste is not None:
                job.paste(r, c, y[k, 0])
        return time.perf_counter() - t0, len(x)

    async def _execute(self, batch_id: int, batch: list[tuple[TileWork, int, int]]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for job, _, _ in batch:
            if job.started_at is None:
                job.started_at = now
        try:
            seconds, padded = await loop.run_in_executor(self._executor, self._work, batch)
        except Exception as err:
            jobs = list(dict.fromkeys(job for job, _, _ in batch))
            log.error("batch %d of %d tiles failed: %s", batch_id, len(batch), err,
                      exc_info=err, extra={"fields": {
                          "request_ids": [job.tag for job in jobs],
                          "failure_id": getattr(err, "failure_id", None)}})
            for job in jobs:
                self._fail(job, err)
            return
        finally:
            self._busy -= 1
            self._dispatch()
        jobs = [job for job, _, _ in batch]
        self.cost.observe(*jobs[0].plan.shape, padded, seconds)
        for job in jobs:
            job.done += 1
            job.model_s += seconds / len(batch)
            if job.done == job.total and job.done_future and not job.done_future.done():
                job.done_future.set_result(None)
        gone = sum(job.cancelled for job in jobs)
        self.on_batch(BatchRecord(batch_id, len(batch), padded, len(set(jobs)), seconds,
                                  seconds * gone / len(batch)))

    def _fail(self, job: TileWork, err: BaseException) -> None:
        job.error = err
        self.release(job)
        if job.done_future and not job.done_future.done():
            job.done_future.set_result(None)

    async def stop(self) -> None:
        """Refuse new work, fail what waits, let running batches end, free the threads."""
        self._closed = True
        for job in list(self._jobs):
            self._fail(job, Busy("shutting down", 5))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)
