"""Jobs shared by every replica through Redis (`LSRCNN_JOBS_STORE=redis://...`): any replica
answers any job's status, result and DELETE; a replica pulls the next job only when its
own request work allows; a job held by a replica that dies is taken over after the lease.

Delivery is at least once: a replica that stalls past its lease may still be running a job
another has taken over; only the replica holding the job when it finishes records its
result (the FINISH script checks), the stale one's is thrown away, and both are the same
pixels.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import secrets
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from app.background.entry import FINISHED, STATE_SLACK, STATUSES, Entry, SpoolFull
from app.background.intake import JobIntake
from app.background.spool import JobState
from app.background.store import ResultStream, Store, StoreUnavailable
from app.images.imaging import ImageError
from app.images.pipeline import Pipeline
from app.images.sizing import Size
from app.runtime.metrics import Metrics
from app.runtime.upscaler import UnknownModel
from app.runtime.work import Busy, TooLarge

log = logging.getLogger("app.background.shared")

# A job started this many times (its replicas died each time: it may be what kills them)
# fails instead of being taken over again. Handed back at a graceful stop does not count.
MAX_DELIVERIES = 3
# Consumers (one per process start) idle this long with nothing pending are removed.
FORGET_AFTER_S = 24 * 3600
# What a beat says that stops the job here for good (not a stop of this replica).
TOLD_TO_STOP = ("cancelled", "lost", "gone")
# A stop cancels the loops up to this many times, waiting this long after each.
STOP_TRIES, STOP_WAIT_S = 3, 5.0



class SharedJobs(JobIntake):
    store = "redis"

    def __init__(self, pipeline: Pipeline, metrics: Metrics) -> None:
        super().__init__(pipeline, metrics)
        s = pipeline.up.settings
        self.db = Store(s.jobs_store.get_secret_value())
        self.lease_s, self.pull_below_s = s.job_lease_s, s.job_pull_below_s
        self.beat_s = max(0.2, min(2.0, self.lease_s / 10))
        # Unique per process start: a replica restarted under the same name must not
        # inherit the leases of the one that died.
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.scratch = Path(s.spool_dir)  # results are encoded here, then stored
        self.entries: dict[str, Entry] = {}  # the job this replica runs
        self._finishing: set[str] = set()  # jobs whose result is being recorded
        self.queue: list[str] = []
        self.available, self.reason = False, "not connected yet"
        self._counts: dict[str, int] = {}
        self._used, self._live = 0, 1
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        metrics.watch_jobs(lambda st: self._counts.get(st, 0), lambda: self._used, STATUSES)
        self.taken_over = metrics.jobs_taken_over

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._tasks = [asyncio.create_task(self._run_forever()),
                       asyncio.create_task(self._sweep_forever())]

    async def stop(self) -> None:
        """Stop; a job running here is handed back at once for another replica. Bounded: a
        loop that a client library kept from seeing its cancellation is cancelled again,
        and one that still does not end is left behind with a warning, not waited for."""
        self._stopping = True
        pending = {t for t in self._tasks if not t.done()}
        try:
            for _ in range(STOP_TRIES):
                if not pending:
                    break
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=STOP_WAIT_S)
            for task in pending:
                log.warning("a jobs loop did not stop in time: %r", task)
            for task in self._tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error("a jobs loop had ended", exc_info=task.exception())
        finally:
            try:
                await asyncio.wait_for(self.db.close(), STOP_WAIT_S)
            except (RedisError, OSError, TimeoutError) as err:
                log.warning("closing the jobs store: %s", err)

    def _raise_if_stopping(self) -> None:
        """Called where a store error is waited out: the Redis client may turn a
        cancellation that meets a failing or timing-out call into its own error, and a loop
        that went on after it would never stop (seen with redis 8.1). The task still says it
        is cancelling; the flag covers a layer that took the cancellation back."""
        task = asyncio.current_task()
        if self._stopping or (task is not None and task.cancelling()):
            raise asyncio.CancelledError

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {"store": self.store, "available": self.available}
        if not self.available:
            body["reason"] = self.reason
        return body

    async def _call(self, coro: Any) -> Any:
        try:
            said = await coro
        except (RedisError, OSError) as err:
            self._down(err)
            raise StoreUnavailable(self.reason) from None
        self.available = True
        return said

    def _down(self, err: BaseException) -> None:
        if self.available or self.reason == "not connected yet":
            log.warning("the jobs store is unavailable: %s", err)
        self.available, self.reason = False, f"{type(err).__name__}: {err}"

    # -- the routes' interface -----------------------------------------------------------

    async def create(self, data: bytes, size: Size, fmt: str | None, quality: int,
                     model: str | None, kind: str, strip: bool, filename: str | None
                     ) -> dict[str, Any]:
        planned, bound, need = self.plan(data, size, fmt, quality, model, kind, strip)
        if self._used + need > self.max_bytes:  # as of the last sweep: no decode to refuse
            raise self._full(self._used, need)
        state = await self.checked_state(planned, bound, data, fmt, quality, strip, filename)
        del planned
        ok, used = await self._call(self.db.admit(state.id, need, self.max_bytes))
        if not ok:
            raise self._full(used, need)
        try:
            await self._call(self.db.put_chunks(self.db.job(state.id) + ":in", data))
            est_s = self._left_s(Entry(state))
            if not await self._call(self.db.commit(state.id, state.to_json(), est_s)):
                raise StoreUnavailable("the submission took too long to store")
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await self.db.unreserve(state.id)
            raise
        return self.view_of(state, 0, state.tiles_total, est_s)

    def _full(self, used: int, need: int) -> SpoolFull:
        # Room comes back as jobs finish and expire: a guess of a few jobs' time.
        retry = max(5, math.ceil(self._counts.get("queued", 0) * 10 / max(1, self._live)))
        return SpoolFull(f"the jobs store is full: {used} of {self.max_bytes} bytes used or "
                         f"promised, and this job needs up to {need}", min(retry, 600))

    async def status(self, job_id: str) -> dict[str, Any] | None:
        fields = await self._call(self.db.read(job_id))
        return None if fields is None else await self._call(self._view(fields))

    async def open_result(self, job_id: str) -> tuple[dict[str, Any], ResultStream] | None:
        fields = await self._call(self.db.read(job_id))
        if fields is None:
            return None
        view = await self._call(self._view(fields))
        return view, ResultStream(self.db, fields.get("result_key", ""),
                                  int(fields.get("result_bytes", 0)))

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """DELETE from any replica: a queued job is cancelled; a running one is marked and
        its holder stops within a beat; a finished one is removed with its result."""
        fields = await self._call(self.db.read(job_id))
        if fields is None:
            return None
        said = await self._call(self.db.cancel(job_id, STATE_SLACK, self.ttl_s))
        if said is None:
            return None
        cancelled, fields["status"] = said  # as the script found it, not as read before
        if cancelled:
            self.finished.labels("cancelled").inc()
        view = await self._call(self._view(fields))
        view.pop("result_url", None)  # a finished one's went with it
        return view

    async def _view(self, fields: dict[str, str]) -> dict[str, Any]:
        st = JobState.from_json(fields["state"].encode())
        st.status, st.error = fields["status"], fields.get("error") or None
        total, done = st.tiles_total, int(fields.get("tiles_done", 0))
        if st.status == "done":
            done = total
        elif st.status in ("queued", "failed"):
            done = 0
        view = self.view_of(st, done, total, await self._eta_of(st.id, fields))
        if st.status == "running" and fields.get("runner"):
            view["replica"] = fields["runner"]
        return view

    def _left_of(self, fields: dict[str, str]) -> float:
        if fields.get("status") == "running" and "eta_s" in fields:
            since = time.time() - float(fields.get("beat_at", time.time()))
            return max(0.0, float(fields["eta_s"]) - since)
        return float(fields.get("est_s", 0.0))

    async def _eta_of(self, job_id: str, fields: dict[str, str]) -> float:
        """A running job's own estimate (its holder's, as of its last beat); a queued one
        waits for the jobs ahead of it, shared among the live replicas."""
        if fields["status"] in FINISHED:
            return 0.0
        own = self._left_of(fields)
        if fields["status"] != "queued":
            return own
        queue = await self.db.queue()
        ahead = queue[:queue.index(job_id)] if job_id in queue else []
        ahead_s = sum(self._left_of(f) for f in await self.db.progress_of(ahead)
                      if f.get("status") not in (None, *FINISHED))
        return ahead_s / max(1, await self.db.live_replicas(self.lease_s)) + own

    # -- running -------------------------------------------------------------------------

    def _may_pull(self) -> bool:
        """Pull a job only when this replica's request work is light: a busy replica leaves
        the queue to its idle peers."""
        if not self.up.ready:
            return False
        return sum(s.work_s for s in self.up.schedulers.values()) < self.pull_below_s

    async def _run_forever(self) -> None:
        lease_ms, grouped, seen_at = int(self.lease_s * 1000), False, 0.0
        while not self._stopping:
            try:
                if not grouped:  # at start, and after any error (a Redis that lost it)
                    await self.db.ensure_group()
                    grouped = True
                if time.monotonic() - seen_at > 1.0:
                    await self.db.seen(self.consumer)
                    seen_at = time.monotonic()
                self.available = True
                if not self._may_pull():
                    await asyncio.sleep(0.2)
                    continue
                got = await self.db.take(self.consumer, lease_ms, block_ms=1000)
                if got is not None:
                    await self._run_one(*got)
            except (RedisError, OSError) as err:
                self._raise_if_stopping()
                self._down(err)
                grouped = False
                await asyncio.sleep(1.0)
            except Exception:  # a bug must not stop this replica's jobs for good
                self._raise_if_stopping()
                log.exception("the jobs loop failed; going on")
                await asyncio.sleep(1.0)

    async def _run_one(self, msg: str, job_id: str) -> None:
        if self._stopping:  # taken just as this replica began to stop: straight back
            await self._hand_back(job_id, msg)
            return
        attempt = await self.db.start(job_id, msg, self.consumer)
        if not attempt:
            return  # cancelled or removed while queued
        try:
            fields = await self.db.read(job_id)
        except asyncio.CancelledError:
            await self._hand_back(job_id, msg)
            raise
        if fields is None:
            return
        st = JobState.from_json(fields["state"].encode())
        st.status = "running"
        if attempt > 1:
            self.taken_over.inc()
            log.info("job %s taken over (attempt %d)", job_id, attempt)
        if attempt > MAX_DELIVERIES:
            await self._end(st, msg, "failed", f"taken over {attempt - 1} times: its "
                            "replicas stopped each time it ran")
            return
        entry = self.entries[job_id] = Entry(st)
        task = asyncio.create_task(self._execute(entry, msg, attempt))
        beat = asyncio.create_task(self._beat(entry, msg, task))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or not current.cancelling():
                return  # the job's own task ended cancelled (its beat stopped it): go on
            # This replica is stopping: hand the job back for another replica. The beat
            # ends first: one landing after the hand-back would hold the job a lease more.
            for child in (beat, task):
                child.cancel()
                with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                    await child
            await self._hand_back(job_id, msg)
            raise
        finally:
            beat.cancel()
            self.entries.pop(job_id, None)

    async def _hand_back(self, job_id: str, msg: str) -> None:
        """Queued again at once for another replica, the attempt not counted; a store that
        does not answer leaves it to the lease."""
        with contextlib.suppress(RedisError, OSError):
            await self.db.release(job_id, msg, self.consumer, int(self.lease_s * 1000))

    async def _beat(self, entry: Entry, msg: str, task: asyncio.Task) -> None:
        """Hold the lease, publish progress, and stop the job if it was cancelled or taken
        over meanwhile. A store that does not answer is waited out (the lease may lapse:
        then the job is done twice, and the first finished wins)."""
        while not task.done():
            await asyncio.sleep(self.beat_s)
            done = entry.job.done if entry.job is not None else 0
            try:
                said = await self.db.beat(entry.state.id, msg, self.consumer, done,
                                          round(self._left_s(entry), 2))
                await self.db.seen(self.consumer)  # busy is alive: queued etas count it
            except (RedisError, OSError) as err:
                self._raise_if_stopping()
                self._down(err)
                continue
            if said != "running" and entry.state.id not in self._finishing:
                log.info("job %s stops here: %s", entry.state.id, said)
                entry.state.error = said
                task.cancel()
                return

    async def _execute(self, entry: Entry, msg: str, attempt: int) -> None:
        st = entry.state
        key = self.db.result_key(st.id, attempt)
        kept: bool | None = False  # None: a finish whose answer was lost (it may have run)
        try:
            chunks = await self.db.get_chunks(self.db.job(st.id) + ":in")
            data = await asyncio.to_thread(b"".join, chunks)
            del chunks
            planned = self._planned(st, data)
            del data
            size = await self.pipeline.to_file(
                planned, st.id, lambda write: self._store_result(entry, key, write),
                on_admit=lambda work: setattr(entry, "job", work))
        except asyncio.CancelledError:
            if st.error in TOLD_TO_STOP:  # by the beat: not a stop
                await self._end(st, msg, "cancelled", "")
                return
            raise
        except Busy:  # the scheduler is stopping: hand the job back for another replica
            await self._hand_back(st.id, msg)
        except (ImageError, TooLarge, UnknownModel) as err:
            await self._end(st, msg, "failed", getattr(err, "message", str(err)))
        except RedisError:
            if st.error in TOLD_TO_STOP:  # the client's own error for the beat's cancel
                await self._end(st, msg, "cancelled", "")
                return
            await self._hand_back(st.id, msg)  # if the store answers; else the lease runs out
            raise
        except Exception:
            log.exception("job %s failed", st.id, extra={"fields": {"request_id": st.id}})
            await self._end(st, msg, "failed", "inference failed")
        else:
            self._finishing.add(st.id)  # the script settles any race with a beat's news
            kept = None
            # Not kept: cancelled meanwhile, or the job is another replica's now.
            kept = await self.db.finish(st.id, msg, self.consumer, "done", "", key, size,
                                        size + STATE_SLACK, self.ttl_s)
            if kept:
                self.finished.labels("done").inc()
        finally:
            entry.job = None
            self._finishing.discard(st.id)
            if kept is False:  # a result stored in part, or one not kept: never left behind
                with contextlib.suppress(RedisError, OSError):
                    await self.db.r.delete(key)

    async def _end(self, st: JobState, msg: str, status: str, error: str) -> None:
        if await self.db.finish(st.id, msg, self.consumer, status, error, "", 0, STATE_SLACK,
                                self.ttl_s):
            self.finished.labels(status).inc()

    async def _store_result(self, entry: Entry, key: str, write: Any) -> int:
        """Encode the result to a scratch file (in a thread), then store it chunk by chunk."""
        entry.writing_since = t0 = time.perf_counter()
        fd, name = tempfile.mkstemp(dir=self.scratch, prefix="result-")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                await entry.in_thread(write, f)
            await self.db.r.delete(key)
            # Until FINISH keeps it, the result expires by itself: a replica killed while
            # storing it leaves nothing behind for long.
            size = await self.db.put_file(key, path, expire_s=max(600, 4 * self.lease_s))
        finally:
            path.unlink(missing_ok=True)
            entry.writing_since = None
        self.learn_write(entry.state, time.perf_counter() - t0)
        return size

    async def _sweep_forever(self) -> None:
        """Jobs past their time to live, and submissions whose replica died, go; the gauges
        are refreshed from the store."""
        for beat in itertools.count():
            if self._stopping:
                return
            try:
                await self.db.sweep()
                self._used, self._counts = await self.db.counts()
                self._live = await self.db.live_replicas(self.lease_s)
                if beat % 300 == 0:  # every 10 minutes
                    await self.db.forget_idle(FORGET_AFTER_S)
            except (RedisError, OSError):
                self._raise_if_stopping()
            await asyncio.sleep(2.0)
