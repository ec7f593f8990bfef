"""How long a job has left: its tiles, at its own pace once it has one, then writing its
result, at the pace results of that format were written here (learnt, from a prior)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.background.entry import FINISHED, Entry
from app.background.spool import JobState

# Seconds per output pixel to encode and write a result, measured on a 2-core x86-64 CPU:
# PNG (level 1) 24 MP/s, WebP 16 MP/s, JPEG 500 MP/s; each finished job refines its own.
WRITE_PRIOR = {"png": 1 / 24e6, "webp": 1 / 16e6, "jpeg": 1 / 500e6}


class Estimates:
    """Mixed into the job manager, which has `up`, `entries` and `queue`."""

    up: Any
    entries: dict[str, Entry]
    queue: Any

    def __init__(self) -> None:
        self.write_rate = dict(WRITE_PRIOR)

    def _model_of(self, st: JobState) -> str | None:
        """The model chosen at submission (older state files lack it: the scale's clean)."""
        return st.model or self.up.engine.model_for(st.scale)

    def _write_s(self, st: JobState) -> float:
        """Seconds to encode and write a job's result."""
        if st.target:
            pixels = st.target[0] * st.target[1]
        elif st.plan:
            pixels = st.plan["height"] * st.plan["width"] * st.scale**2
        else:
            pixels = 0
        return pixels * self.write_rate.get(st.out_format, WRITE_PRIOR["png"])

    def learn_write(self, st: JobState, seconds: float) -> None:
        """A result was written in `seconds`: move that format's rate halfway there."""
        st_s = self._write_s(st)
        if st_s > 0:
            rate = self.write_rate.get(st.out_format, WRITE_PRIOR["png"])
            self.write_rate[st.out_format] = 0.5 * rate + 0.5 * rate * seconds / st_s

    def _left_s(self, entry: Entry) -> float:
        """Wall seconds a job has left: its tiles (all workers on it), then its result."""
        st = entry.state
        name = self._model_of(st)
        sched = self.up.schedulers.get(name) if name is not None else None
        if sched is None or st.status in FINISHED:
            return 0.0
        write_s = self._write_s(st)
        if entry.writing_since is not None:
            return max(0.0, write_s - (time.perf_counter() - entry.writing_since))
        job = entry.job
        if job is None:
            return sched.cost.seconds(st.tile_h, st.tile_w, st.tiles_total) / sched.workers \
                + write_s
        if job.started_at is not None and job.done >= max(2, job.total // 20):
            # The job's own pace so far: it includes the requests it yields to, which the
            # cost model's prior does not (that was 1.7-2.5x optimistic at x4).
            spent = asyncio.get_running_loop().time() - job.started_at
            return spent / job.done * (job.total - job.done) + write_s
        return sched.remaining_s(job) / sched.workers + write_s

    def _eta_s(self, entry: Entry) -> float:
        if entry.state.status != "queued":
            return self._left_s(entry)
        ahead = [e for e in self.entries.values() if e.state.status == "running"]
        for job_id in self.queue:
            if job_id == entry.state.id:
                break
            if (e := self.entries.get(job_id)) is not None:
                ahead.append(e)
        return sum(self._left_s(e) for e in ahead) + self._left_s(entry)

    def backlog_s(self) -> float:
        return sum(self._left_s(e) for e in self.entries.values())
