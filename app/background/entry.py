"""A job as the manager holds it: its persisted state, its tile work while it runs, and
its file work, which one task at a time does (cancel and removal wait it out)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from app.background.spool import JobState
from app.runtime.work import TileWork

T = TypeVar("T")

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
# Decodes at submission at once (each up to the job pixel limit): more wait their turn.
SUBMIT_DECODES = 2
# Room kept in the spool cap for a job's state file: its plan's JSON is counted at
# submission; this covers the rest of it and its growth as the job moves on.
STATE_SLACK = 4096


class SpoolFull(Exception):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Entry:
    state: JobState
    job: TileWork | None = None  # the scheduler's job while its tiles run
    task: asyncio.Task | None = None  # while running
    bytes: int = 0  # of its folder in the spool
    file_work: asyncio.Future | None = None  # its file work in a thread, which cancel waits out
    writing_since: float | None = None  # perf_counter when its result began to be written

    @property
    def pending(self) -> int:
        """Bytes reserved for a result not written yet."""
        return self.state.result_bound if self.state.status in ("queued", "running") else 0

    def progress(self) -> tuple[int, int]:
        """Tiles done and in all: the scheduler's count while running."""
        st = self.state
        if st.status == "running" and self.job is not None:
            return self.job.done, self.job.total
        done = {"done": st.tiles_total, "cancelled": st.tiles_done}.get(st.status, 0)
        return done, st.tiles_total

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """The job's file work, in a thread that a cancelled task cannot leave half done:
        the next file work on the job (cancel, removal) waits for it (`settle`)."""
        self.file_work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        return await asyncio.shield(self.file_work)

    async def settle(self) -> None:
        if self.file_work is not None and not self.file_work.done():
            await asyncio.wait({self.file_work})
