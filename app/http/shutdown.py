"""Graceful shutdown: SIGTERM turns readiness and new requests to 503 at once; requests in
flight get the grace period, and those still running when it ends answer a JSON 503."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class Drain:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.active = False  # SIGTERM seen: not ready, new requests refused
        self.expired = False  # grace over: requests still running are cancelled
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the app's lifespan
        self._tasks: set[asyncio.Task] = set()

    def begin(self) -> None:
        """Start draining. Safe to call from a signal handler: it sets flags and schedules."""
        if self.active:
            return
        self.active = True
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.call_later, self.grace_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        for task in list(self._tasks):
            task.cancel("grace period over")

    @contextlib.contextmanager
    def track(self) -> Iterator[asyncio.Task]:
        """Register the current request's task so the end of the grace period can stop it."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield task
        finally:
            self._tasks.discard(task)
