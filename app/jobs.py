"""Asynchronous jobs: accepted into the spool, run one at a time in the background, kept
for a while, found again after a restart.

A job is acknowledged only once its input is synced to disk; its state file says queued,
running, done or failed. At start the spool is scanned: queued and running jobs (a stop
or a crash interrupted them) are queued again in their order of arrival, finished ones
kept until their time to live is over. Jobs run through the same scheduler as requests, at
background priority: a request waits for at most the background tiles already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from app import background, imaging
from app.imaging import ImageError
from app.metrics import Metrics
from app.scheduler import Busy, Job, TooLarge
from app.spool import JobState, Spool, new_id
from app.upscaler import AUTO, UnknownModel, Upscaler

log = logging.getLogger("app.jobs")

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed")


class SpoolFull(Exception):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Entry:
    state: JobState
    job: Job | None = None  # the scheduler's job while its tiles run
    task: asyncio.Task | None = None  # while running
    bytes: int = 0  # of its folder in the spool


class JobManager:
    def __init__(self, upscaler: Upscaler, metrics: Metrics) -> None:
        s = upscaler.settings
        self.up, self.ttl_s, self.max_bytes = upscaler, s.job_ttl_s, s.spool_max_bytes
        self.spool = Spool(Path(s.spool_dir))
        self.entries: dict[str, Entry] = {}
        self.queue: deque[str] = deque()
        self._reserved = 0  # bytes of submissions being written
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        r = metrics.registry
        gauge = Gauge("lsrcnn_jobs", "Jobs in the spool by status", ["status"], registry=r)
        for status in STATUSES[:4]:
            gauge.labels(status).set_function(lambda status=status: self.count(status))
        Gauge("lsrcnn_spool_bytes", "Bytes of inputs and results in the jobs spool",
              registry=r).set_function(lambda: self.bytes)
        self.finished = Counter("lsrcnn_jobs_finished_total",
                                "Jobs that ended, by status (done, failed, cancelled)",
                                ["status"], registry=r)

    @property
    def bytes(self) -> int:
        """Bytes in the spool: every job's folder, and submissions being written."""
        return self._reserved + sum(e.bytes for e in self.entries.values())

    def count(self, status: str) -> int:
        return sum(e.state.status == status for e in self.entries.values())

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        """Find the spooled jobs again, then run them and sweep expired ones."""
        for state in await asyncio.to_thread(self.spool.scan):
            used = await asyncio.to_thread(self.spool.used_bytes, state.id)
            if state.status not in FINISHED:
                state.status = "queued"  # interrupted: from the start again
                self.queue.append(state.id)
            self.entries[state.id] = Entry(state, bytes=used)
        if self.queue:
            log.info("%d spooled jobs found again", len(self.queue))
        self._tasks = [asyncio.create_task(self._run_forever()),
                       asyncio.create_task(self._sweep_forever())]

    async def stop(self) -> None:
        """Stop running: the running job's state stays `running` on disk, so the next start
        runs it again."""
        running = [e.task for e in self.entries.values() if e.task is not None]
        for task in [*self._tasks, *running]:
            task.cancel()
        for task in [*self._tasks, *running]:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the API -----------------------------------------------------------------------

    async def submit(self, data: bytes, scale: int, fmt: str | None, quality: int,
                     model: str | None = None, kind: str = AUTO) -> JobState:
        """Check (400/413/415/422 from the header and a decode), choose the model, spool
        durably, queue."""
        probed, plan, name = background.check(self.up, data, scale, fmt, model, kind)
        if self.bytes + len(data) > self.max_bytes:
            raise SpoolFull(f"the jobs spool is full ({self.bytes} of {self.max_bytes} bytes)",
                            max(5, math.ceil(self.backlog_s())))
        state = JobState(new_id(), scale, fmt, quality,
                         imaging.output_format(fmt, probed.format), plan.count, plan.tile_h,
                         plan.tile_w, len(data), model=name)
        # Decoded once now, as /upscale would before its model work, so that a corrupt or
        # truncated body is a 400 here rather than a job that fails later.
        await asyncio.to_thread(imaging.load, probed)
        del probed
        self._reserved += len(data)
        try:
            await asyncio.to_thread(self.spool.create, state, data)
            used = await asyncio.to_thread(self.spool.used_bytes, state.id)
        finally:
            self._reserved -= len(data)
        self.entries[state.id] = Entry(state, bytes=used)
        self.queue.append(state.id)
        self._wake.set()
        return state

    def get(self, job_id: str) -> Entry | None:
        return self.entries.get(job_id)

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a job (its waiting tiles leave the queue) and remove its files."""
        entry = self.entries.pop(job_id, None)
        if entry is None:
            return None
        if entry.task is not None:
            entry.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.task
        with contextlib.suppress(ValueError):
            self.queue.remove(job_id)
        if entry.state.status not in FINISHED:
            entry.state.status = "cancelled"
            self.finished.labels("cancelled").inc()
        await self._remove(job_id)
        view = self.view(entry)
        view.pop("result_url", None)  # gone with the files
        return view

    def result(self, entry: Entry) -> tuple[Path, str]:
        return (self.spool.result_path(entry.state.id),
                imaging.MEDIA_TYPES[entry.state.out_format])

    def view(self, entry: Entry) -> dict[str, Any]:
        """The job as the API shows it."""
        st = entry.state
        total, done = st.tiles_total, 0
        if st.status == "running" and entry.job is not None:
            total, done = entry.job.total, entry.job.done
        elif st.status == "done":
            done = total
        body: dict[str, Any] = {
            "id": st.id, "status": st.status,
            "progress": round(done / total, 4) if total else float(st.status == "done"),
            "tiles_done": done, "tiles_total": total, "eta_s": round(self._eta_s(entry), 1),
            "scale": st.scale, "model": self._model_of(st), "format": st.out_format}
        if st.error:
            body["error"] = st.error
        if st.status == "done":
            body["result_url"] = f"/v1/jobs/{st.id}/result"
        return body

    # -- estimates -----------------------------------------------------------------------

    def _left_s(self, entry: Entry) -> float:
        """Wall seconds of model work left for a job, all workers on it."""
        st = entry.state
        name = self._model_of(st)
        sched = self.up.schedulers.get(name) if name is not None else None
        if sched is None or st.status in FINISHED:
            return 0.0
        if entry.job is not None:
            return sched.remaining_s(entry.job) / sched.workers
        return sched.cost.seconds(st.tile_h, st.tile_w, st.tiles_total) / sched.workers

    def _model_of(self, st: JobState) -> str | None:
        """The job's model: chosen at submission; a job spooled by an older version that
        did not record it runs with its scale's clean model."""
        return st.model or self.up.engine.model_for(st.scale)

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

    # -- running -------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        while True:
            if not self.queue or not self.up.ready:
                self._wake.clear()
                # Readiness is polled. asyncio.timeout, not wait_for: on Python 3.11 a stop
                # that lands as wait_for times out is turned into a TimeoutError and lost.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._wake.wait()
                continue
            entry = self.entries.get(self.queue.popleft())
            if entry is None or entry.state.status != "queued":
                continue
            entry.task = asyncio.create_task(self._execute(entry))
            try:
                await asyncio.wait({entry.task})
            finally:
                entry.task = None if entry.task.done() else entry.task

    async def _execute(self, entry: Entry) -> None:
        st = entry.state
        st.status = "running"
        await asyncio.to_thread(self.spool.save, st)
        try:
            data = await asyncio.to_thread(self.spool.read_input, st.id)
            size = await background.upscale_to_file(
                self.up, self.spool, st.id, data, st.scale, st.format, st.quality,
                self._model_of(st), on_admit=lambda job: setattr(entry, "job", job))
        except Busy:  # the scheduler is stopping: the next start runs it again
            log.info("job %s interrupted by the shutdown", st.id)
            return
        except (ImageError, TooLarge, UnknownModel) as err:
            await self._finish(entry, "failed", getattr(err, "message", str(err)))
        except Exception:
            log.exception("job %s failed", st.id, extra={"fields": {"request_id": st.id}})
            await self._finish(entry, "failed", "inference failed")
        else:
            st.result_bytes = size
            await asyncio.to_thread(self.spool.drop_input, st.id)
            await self._finish(entry, "done")
            entry.bytes = await asyncio.to_thread(self.spool.used_bytes, st.id)
        finally:
            entry.job = None

    async def _finish(self, entry: Entry, status: str, error: str | None = None) -> None:
        st = entry.state
        st.status, st.error, st.finished = status, error, time.time()
        await asyncio.to_thread(self.spool.save, st)
        self.finished.labels(status).inc()

    async def _remove(self, job_id: str) -> None:
        await asyncio.to_thread(self.spool.remove, job_id)

    async def _sweep_forever(self) -> None:
        """Finished jobs go once their time to live is over."""
        while True:
            now = time.time()
            for job_id, entry in list(self.entries.items()):
                st = entry.state
                if st.finished is not None and now - st.finished > self.ttl_s:
                    self.entries.pop(job_id, None)
                    await self._remove(job_id)
            await asyncio.sleep(min(60.0, max(0.2, self.ttl_s / 4)))
