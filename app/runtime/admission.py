"""Admission in seconds of work: a request's tiles are admitted only if its estimated model
time fits its deadline with every admitted request still meeting its own (Triton's bounded
queue with REJECT, counted in seconds, not items: one thin image can be a thousand tiles).
A mixin of the Scheduler, whose state it reads."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from app.runtime.tiling import TilePlan
from app.runtime.work import SYNC, Busy, CostModel, TileWork, TooLarge


class Admission:
    """The Scheduler's admission: refusals before a body is read, at admission, and the
    largest input that could pass."""

    # Provided by the Scheduler.
    cost: CostModel
    workers: int
    max_tiles: int
    queue_limit: int
    timeout_s: float
    headroom: float
    planner: Callable[[int, int], TilePlan]
    _closed: bool
    _jobs: set[TileWork]
    drain_s: float
    waiting_tiles: int

    def remaining_s(self, job: TileWork) -> float: ...
    def _sync_jobs(self) -> list[TileWork]: ...
    def _background_running_s(self) -> float: ...

    def refuse_early(self) -> None:
        """Busy at once, before a body is read, when the admitted work alone already fills
        the deadline: no request, however small, could be admitted now."""
        if self._closed:
            raise Busy("shutting down", 5)
        if self.drain_s >= self.headroom * self.timeout_s:
            raise Busy(f"about {self.drain_s:.1f} s of work queued", self._retry_after())

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
            raise TooLarge(f"the image needs about {alone:.2g} s of model time, over the "
                           f"{self.headroom * self.timeout_s:.2g} s a request may spend on "
                           f"the model ({self.headroom:.0%} of its {self.timeout_s:g} s "
                           f"deadline; the rest is for decoding and encoding); the largest "
                           f"input that fits is about {side}x{side} pixels: send bigger "
                           f"images to POST /v1/jobs, which has no deadline", "too_slow", side)
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
