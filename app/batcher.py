"""Dynamic batching: tiles of all concurrent requests share one model call.

One small class (after Ray Serve's _BatchQueue and LitServe's collate loop): a bounded
queue of tiles, one future per tile, batches cut at `max_batch` tiles or when the oldest
tile has waited `max_wait`. Model calls run in worker threads, never on the event loop;
up to `workers` batches run at once (Triton's model instances), so a CPU whose single call
cannot fill every core still gets used. A failed call fails every tile of that batch; the
loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("app.batcher")


class QueueFull(Exception):
    """Too many tiles waiting: the client should retry later (503)."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its tiles were done (504)."""


class BatchFailed(Exception):
    """The model call for a batch holding this request's tiles failed (500)."""


@dataclass
class _Item:
    tile: np.ndarray
    future: asyncio.Future
    enqueued: float
    ticket: int  # which submit() call it belongs to


@dataclass
class BatchStats:
    """What one submit() saw: for Server-Timing and metrics."""

    batches: dict[int, float] = field(default_factory=dict)  # batch id -> seconds in the model

    @property
    def inference_s(self) -> float:
        return sum(self.batches.values())


@dataclass
class BatchRecord:
    batch_id: int
    size: int
    tickets: set[int]
    seconds: float


class Batcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int,
                 max_wait_s: float, queue_limit: int, workers: int = 1, name: str = "model",
                 on_batch: Callable[[BatchRecord], None] | None = None,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self._run = run
        self.max_batch, self.max_wait_s, self.queue_limit = max_batch, max_wait_s, queue_limit
        self.name = name
        self._items: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.workers = workers
        self._slots = asyncio.Semaphore(workers)
        self._running: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=workers,
                                            thread_name_prefix=f"infer-{name}")
        self._tickets = 0
        self._batches = 0
        self._stats: dict[int, BatchStats] = {}
        self._on_batch = on_batch or (lambda record: None)
        self._on_depth = on_depth or (lambda depth: None)

    @property
    def depth(self) -> int:
        return len(self._items)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for item in self._items:
            if not item.future.done():
                item.future.set_exception(BatchFailed("service shutting down"))
        self._items.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, tiles: np.ndarray, deadline: float) -> tuple[np.ndarray, BatchStats]:
        """Queue every tile of one request; wait for all of them or for the deadline."""
        if self.depth + len(tiles) > self.queue_limit:
            raise QueueFull(f"{self.depth} tiles queued; limit {self.queue_limit}")
        loop = asyncio.get_running_loop()
        self._tickets += 1
        ticket, now = self._tickets, loop.time()
        stats = self._stats[ticket] = BatchStats()
        items = [_Item(t, loop.create_future(), now, ticket) for t in tiles]
        self._items.extend(items)
        self._on_depth(self.depth)
        self._wake.set()
        try:
            async with asyncio.timeout_at(deadline):
                results = await asyncio.gather(*(it.future for it in items))
        except TimeoutError as err:
            self._withdraw(ticket, items)
            raise DeadlineExceeded("request deadline passed") from err
        except BaseException:
            self._withdraw(ticket, items)
            raise
        finally:
            self._stats.pop(ticket, None)
        return np.stack(results), stats

    def _withdraw(self, ticket: int, items: list[_Item]) -> None:
        """Take a request's waiting tiles out of the queue: nobody will read their results."""
        for it in items:
            if not it.future.done():
                it.future.cancel()
        self._items = deque(it for it in self._items if it.ticket != ticket)
        self._on_depth(self.depth)

    async def _next_batch(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        while not self._items:
            self._wake.clear()
            await self._wake.wait()
        # Wait for a full batch, but never let the oldest tile wait longer than max_wait.
        while len(self._items) < self.max_batch:
            remaining = self._items[0].enqueued + self.max_wait_s - loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                break
            if not self._items:  # all withdrawn meanwhile
                return []
        batch = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
        self._on_depth(self.depth)
        return [it for it in batch if not it.future.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # a batch forms only once a worker is free for it
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            self._batches += 1
            task = loop.create_task(self._execute(self._batches, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch_id: int, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        try:
            x = np.stack([it.tile for it in batch])
            t0 = time.perf_counter()
            y = await loop.run_in_executor(self._executor, self._run, x)
            if len(y) != len(batch):
                raise BatchFailed(f"model returned {len(y)} outputs for {len(batch)} tiles")
        except Exception as err:
            log.error("batch %d of %d tiles failed: %r", batch_id, len(batch), err)
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(BatchFailed("inference failed"))
            return
        finally:
            self._slots.release()
        seconds = time.perf_counter() - t0
        tickets = {it.ticket for it in batch}
        for ticket in tickets:
            if ticket in self._stats:
                self._stats[ticket].batches[batch_id] = seconds
        self._on_batch(BatchRecord(batch_id, len(batch), tickets, seconds))
        for it, out in zip(batch, y, strict=True):
            if not it.future.done():
                it.future.set_result(out)
