"""Asynchronous jobs: accepted into the spool, run one at a time in the background, kept
for a while, found again after a restart.

A job is acknowledged only once its input is synced to disk; its state file says queued,
running, done, failed or cancelled, each transition persisted. At start the spool is
scanned: queued and running jobs (a stop or a crash interrupted them) are queued again in
their order of arrival, finished ones kept until their time to live is over. Jobs run
through the same pipeline and scheduler as requests, at background priority: a request
waits for at most the background tiles already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, TypeVar

from app.background.entry import FINISHED, STATUSES, Entry, SpoolFull
from app.background.intake import JobIntake
from app.background.spool import JobState, Spool
from app.images.imaging import ImageError
from app.images.pipeline import Pipeline
from app.images.sizing import Size
from app.runtime.metrics import Metrics
from app.runtime.upscaler import AUTO, UnknownModel
from app.runtime.work import Busy, TooLarge

log = logging.getLogger("app.background.jobs")
T = TypeVar("T")

class JobManager(JobIntake):
    store = "spool"

    def __init__(self, pipeline: Pipeline, metrics: Metrics) -> None:
        super().__init__(pipeline, metrics)
        self.spool = Spool(Path(pipeline.up.settings.spool_dir))
        self.entries: dict[str, Entry] = {}
        self.queue: deque[str] = deque()
        self._reserved = 0  # bytes of submissions being checked and written
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        metrics.watch_jobs(self.count, lambda: self.bytes, STATUSES)

    @property
    def bytes(self) -> int:
        """Bytes in the spool and promised to it (results not written, at their bound)."""
        return self._reserved + sum(e.bytes + e.pending for e in self.entries.values())

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
        """Stop running: a running job stays `running` on disk; the next start reruns it."""
        running = [e.task for e in self.entries.values() if e.task is not None]
        for task in [*self._tasks, *running]:
            task.cancel()
        for task in [*self._tasks, *running]:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the API -----------------------------------------------------------------------

    async def submit(self, data: bytes, size: Size, fmt: str | None, quality: int,
                     model: str | None = None, kind: str = AUTO, strip: bool = False,
                     filename: str | None = None) -> JobState:
        """Check (400/413/415/422 from the header and a decode), choose the model, reserve
        the input's and the result's bytes in the cap, spool durably, queue."""
        planned, bound, need = self.plan(data, size, fmt, quality, model, kind, strip)
        if self.bytes + need > self.max_bytes:
            raise SpoolFull(f"the jobs spool is full: {self.bytes} of {self.max_bytes} bytes "
                            f"used or promised, and this job needs up to {need}",
                            max(5, math.ceil(self.backlog_s())))
        self._reserved += need  # before any await: concurrent submissions see it
        try:
            state = await self.checked_state(planned, bound, data, fmt, quality, strip,
                                             filename)
            del planned
            await asyncio.to_thread(self.spool.create, state, data)
            used = await asyncio.to_thread(self.spool.used_bytes, state.id)
        finally:
            self._reserved -= need
        self.entries[state.id] = Entry(state, bytes=used)
        self.queue.append(state.id)
        self._wake.set()
        return state

    def get(self, job_id: str) -> Entry | None:
        return self.entries.get(job_id)

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """DELETE: a queued or running job is cancelled (its waiting tiles leave the queue),
        its input and any result removed, and `cancelled` kept, persisted, for its time to
        live; a finished one is removed with its files at once."""
        entry = self.entries.get(job_id)
        if entry is None:
            return None
        st = entry.state
        if st.status in FINISHED:
            self.entries.pop(job_id, None)
            await entry.settle()
            await self._remove(job_id)
            view = self.view(entry)
            view.pop("result_url", None)  # gone with the files
            return view
        done = entry.job.done if entry.job is not None else 0
        if entry.task is not None:
            entry.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.task
        with contextlib.suppress(ValueError):
            self.queue.remove(job_id)
        await entry.settle()  # a result being written is finished first, then removed
        st.tiles_done = done
        await entry.in_thread(self.spool.clear, job_id)
        await self._finish(entry, "cancelled")
        entry.bytes = await entry.in_thread(self.spool.used_bytes, job_id)
        return self.view(entry)

    def view(self, entry: Entry) -> dict[str, Any]:
        """The job as the API shows it."""
        return self.view_of(entry.state, *entry.progress(), self._eta_s(entry))

    # -- the routes' interface, common to every store ----------------------------------

    async def create(self, data: bytes, size: Size, fmt: str | None, quality: int,
                     model: str | None, kind: str, strip: bool, filename: str | None
                     ) -> dict[str, Any]:
        state = await self.submit(data, size, fmt, quality, model, kind, strip, filename)
        return self.view(self.entries[state.id])

    async def status(self, job_id: str) -> dict[str, Any] | None:
        entry = self.get(job_id)
        return None if entry is None else self.view(entry)

    async def open_result(self, job_id: str) -> tuple[dict[str, Any], Path] | None:
        """The job's view and, once done, its result's file."""
        entry = self.get(job_id)
        if entry is None:
            return None
        return self.view(entry), self.spool.result_path(job_id)

    def health(self) -> dict[str, Any]:
        return {"store": self.store, "available": True}

    # -- running -------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        while True:
            entry = self._next()
            if entry is None:
                self._wake.clear()
                # Readiness is polled. asyncio.timeout, not wait_for: on Python 3.11 a stop
                # that lands as wait_for times out is turned into a TimeoutError and lost.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._wake.wait()
                continue
            self.queue.popleft()
            entry.task = asyncio.create_task(self._execute(entry))
            try:
                await asyncio.wait({entry.task})
            finally:
                entry.task = None if entry.task.done() else entry.task

    def _next(self) -> Entry | None:
        """The job at the head of the queue if it can run now (gone ones are dropped)."""
        while self.queue:
            entry = self.entries.get(self.queue[0])
            if entry is not None and entry.state.status == "queued":
                return entry if self._runnable(entry.state) else None
            self.queue.popleft()
        return None

    async def _execute(self, entry: Entry) -> None:
        st = entry.state
        st.status = "running"
        await entry.in_thread(self.spool.save, st)
        try:
            data = await entry.in_thread(self.spool.read_input, st.id)
            planned = self._planned(st, data)
            del data  # the probe's file holds it until it is decoded
            size = await self.pipeline.to_file(
                planned, st.id, lambda write: self._write(entry, write),
                on_admit=lambda work: setattr(entry, "job", work))
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
            await entry.in_thread(self.spool.drop_input, st.id)
            entry.bytes = await entry.in_thread(self.spool.used_bytes, st.id)
            await self._finish(entry, "done")  # the reservation goes with `running`
            entry.bytes = await entry.in_thread(self.spool.used_bytes, st.id)
        finally:
            entry.job = None

    async def _write(self, entry: Entry, write: Any) -> int:
        """Write a job's result (timed: the next estimates of its format learn from it)."""
        entry.writing_since = t0 = time.perf_counter()
        try:
            size = await entry.in_thread(self.spool.write_result, entry.state.id, write)
        finally:
            entry.writing_since = None
        self.learn_write(entry.state, time.perf_counter() - t0)
        return size

    async def _finish(self, entry: Entry, status: str, error: str | None = None) -> None:
        st = entry.state
        st.status, st.error, st.finished = status, error, time.time()
        await entry.in_thread(self.spool.save, st)
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
                    await entry.settle()
                    await self._remove(job_id)
            await asyncio.sleep(min(60.0, max(0.2, self.ttl_s / 4)))
