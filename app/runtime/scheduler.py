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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.runtime.admission import Admission
from app.runtime.tiling import Span, TilePlan
from app.runtime.work import (
    SYNC,
    BatchFailed,
    BatchRecord,
    Busy,
    CostModel,
    DeadlineExceeded,
    TileWork,
)

log = logging.getLogger("app.runtime.scheduler")


@dataclass
class Scheduler(Admission):
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
        # Jobs with tiles waiting: those not served yet, in order of arrival, and those
        # served at least once, in turn order. Turns alternate between the two.
        self._fresh: deque[TileWork] = deque()
        self._ring: deque[TileWork] = deque()
        self._fresh_next = True
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

    def free_workers(self) -> int:
        """Workers that no admitted tile is waiting for: a new job may spread over them."""
        return max(0, self.workers - self._busy - self.waiting_tiles)

    def release(self, job: TileWork) -> None:
        """Forget a job: finished, failed or withdrawn. Idempotent."""
        self._jobs.discard(job)
        for line in (self._fresh, self._ring):
            with contextlib.suppress(ValueError):
                line.remove(job)

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
        self._fresh.append(job)  # its first turn comes next, after those who came before
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

    def _turns(self) -> list[TileWork]:
        """The order of the next turns, most urgent priority first: a job not served yet
        and the ring take turns about, so a newcomer goes next (a small request passes a
        big one) and, among newcomers, the older first; no job can be passed over more
        than once per turn of every other job (no starvation under a stream of small ones)."""
        first, second = (self._fresh, self._ring) if self._fresh_next else (self._ring,
                                                                              self._fresh)
        order = [*first, *second]
        top = min(job.priority for job in order)
        return [job for job in order if job.priority == top]

    def _take_batch(self) -> list[tuple[TileWork, int, int]]:
        """Up to max_batch tiles of one shape, one per job per turn, in turn order."""
        turns = self._turns()
        shape = turns[0].plan.shape
        batch: list[tuple[TileWork, int, int]] = []
        served: list[TileWork] = []
        while len(batch) < self.max_batch:
            progressed = False
            for job in turns:
                if len(batch) >= self.max_batch:
                    break
                if job.plan.shape != shape or job.waiting == 0:
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
        if self._fresh and self._ring:
            self._fresh_next = served[0] not in self._fresh if served else self._fresh_next
        for job in served:  # their turn is used: to the back of the ring, or out of it
            (self._fresh if job in self._fresh else self._ring).remove(job)
            if job.waiting:
                self._ring.append(job)
        return batch

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._busy < self.workers and (self._fresh or self._ring) and not self._closed:
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
