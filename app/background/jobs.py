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
import json
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, TypeVar

from app.background.entry import FINISHED, STATE_SLACK, STATUSES, SUBMIT_DECODES, Entry, SpoolFull
from app.background.estimates import Estimates
from app.background.spool import JobState, Spool, new_id, result_bound
from app.images import imaging
from app.images.imaging import ImageError
from app.images.pipeline import Pipeline, Planned
from app.images.sizing import Size
from app.runtime import tiling
from app.runtime.metrics import Metrics
from app.runtime.upscaler import AUTO, UnknownModel
from app.runtime.work import Busy, TooLarge

log = logging.getLogger("app.background.jobs")
T = TypeVar("T")

class JobManager(Estimates):
    def __init__(self, pipeline: Pipeline, metrics: Metrics) -> None:
        super().__init__()
        s = pipeline.up.settings
        self.pipeline, self.up = pipeline, pipeline.up
        self.ttl_s, self.max_bytes = s.job_ttl_s, s.spool_max_bytes
        # Jobs have pixel limits of their own, larger than a request's.
        self.limits = (s.job_max_input_pixels, s.job_max_output_pixels or s.max_output_pixels)
        self.spool = Spool(Path(s.spool_dir))
        self.entries: dict[str, Entry] = {}
        self.queue: deque[str] = deque()
        self._reserved = 0  # bytes of submissions being checked and written
        self._decodes = asyncio.Semaphore(SUBMIT_DECODES)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        metrics.watch_jobs(self.count, lambda: self.bytes, STATUSES)
        self.finished = metrics.jobs_finished

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
        planned = self.pipeline.plan(data, size, model, kind, fmt, quality, self.limits, strip)
        bound = result_bound(planned.probed, planned.scale, planned.out_fmt)
        # The input, the result at its largest, and the state file (with slack for growth).
        need = len(data) + bound + len(json.dumps(tiling.plan_to_dict(planned.plan))) \
            + STATE_SLACK
        if self.bytes + need > self.max_bytes:
            raise SpoolFull(f"the jobs spool is full: {self.bytes} of {self.max_bytes} bytes "
                            f"used or promised, and this job needs up to {need}",
                            max(5, math.ceil(self.backlog_s())))
        self._reserved += need  # before any await: concurrent submissions see it
        try:
            # Decoded now, as /upscale would before its model work, so that a corrupt or
            # truncated body is a 400 here rather than a job that fails later; a few at a
            # time, since each may be as large as the job pixel limit.
            async with self._decodes:
                await self.pipeline.decode_image(planned)
            plan = planned.plan  # as decoded (an orientation the header did not tell)
            state = JobState(new_id(), planned.scale, fmt, quality, planned.out_fmt,
                             plan.count, plan.tile_h, plan.tile_w, len(data),
                             model=planned.name, result_bound=bound + STATE_SLACK,
                             plan=tiling.plan_to_dict(plan), strip=strip,
                             target=list(planned.target) if planned.target else None,
                             filename=filename)
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

    def result(self, entry: Entry) -> tuple[Path, str]:
        return (self.spool.result_path(entry.state.id),
                imaging.MEDIA_TYPES[entry.state.out_format])

    def view(self, entry: Entry) -> dict[str, Any]:
        """The job as the API shows it."""
        st, (done, total) = entry.state, entry.progress()
        body: dict[str, Any] = {
            "id": st.id, "status": st.status,
            "progress": round(done / total, 4) if total else float(st.status == "done"),
            "tiles_done": done, "tiles_total": total, "eta_s": round(self._eta_s(entry), 1),
            "scale": st.scale, "model": self._model_of(st), "format": st.out_format}
        if st.target:
            body["size"] = st.target
        if st.filename:
            body["filename"] = st.filename
        if st.error:
            body["error"] = st.error
        if st.status == "done":
            body["result_url"] = f"/v1/jobs/{st.id}/result"
        return body

    # -- estimates -----------------------------------------------------------------------

    def _planned(self, st: JobState, data: bytes) -> Planned:
        """A spooled job as its submission planned it: its model and plan, not made again.
        (State files of older versions lack them: their model and plan are made now.)"""
        name = self._model_of(st)
        if name is None or not self.up.model_ready(name):
            raise UnknownModel(f"model {name} is not served any more")
        if st.plan is None:
            return self.pipeline.plan(data, Size(st.scale), name, AUTO, st.format,
                                      st.quality, self.limits, st.strip)
        return Planned(imaging.reopen(data), name, st.scale, tiling.plan_from_dict(st.plan),
                       st.out_format, st.quality, st.strip,
                       tuple(st.target) if st.target else None)  # type: ignore[arg-type]

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
                return entry if self._runnable(entry) else None
            self.queue.popleft()
        return None

    def _runnable(self, entry: Entry) -> bool:
        """A job runs once its model serves; or, once the service is ready, to fail if its
        model is not there (a model removed since the job was spooled)."""
        name = self._model_of(entry.state)
        return self.up.ready or (name is not None and self.up.model_ready(name))

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
