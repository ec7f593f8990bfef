"""The batcher with a fake engine: cross-request batches, limits, deadlines, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.batcher import Batcher, BatchFailed, BatchRecord, DeadlineExceeded, QueueFull


class FakeEngine:
    """Doubles every value; records batch sizes; can be told to fail or to be slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sizes: list[int] = []
        self.fail_next = False
        self.release = threading.Event()
        self.release.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.release.wait(5)
        time.sleep(self.delay)
        self.sizes.append(len(x))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return x * 2


def _tiles(n: int, value: float) -> np.ndarray:
    return np.full((n, 1, 4, 4), value, np.float32)


async def _run(batcher: Batcher, coro):  # type: ignore[no-untyped-def]
    batcher.start()
    try:
        return await coro
    finally:
        await batcher.stop()


def _deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def test_tiles_of_concurrent_requests_share_batches() -> None:
    engine = FakeEngine(delay=0.01)
    records: list[BatchRecord] = []
    batcher = Batcher(engine, max_batch=8, max_wait_s=0.05, queue_limit=100,
                      on_batch=records.append)

    async def main() -> list:
        return await asyncio.gather(*(batcher.submit(_tiles(3, i), _deadline())
                                      for i in range(4)))

    results = asyncio.run(_run(batcher, main()))
    for i, (out, stats) in enumerate(results):
        np.testing.assert_array_equal(out, _tiles(3, 2 * i))  # each gets its own tiles back
        assert stats.inference_s > 0
    assert sum(engine.sizes) == 12 and max(engine.sizes) <= 8
    assert any(len(r.tickets) > 1 for r in records)  # a batch held tiles of several requests


def test_max_wait_bounds_the_wait_for_a_lone_request() -> None:
    engine = FakeEngine()
    batcher = Batcher(engine, max_batch=64, max_wait_s=0.02, queue_limit=100)

    async def main() -> float:
        t0 = time.perf_counter()
        await batcher.submit(_tiles(2, 1), _deadline())
        return time.perf_counter() - t0

    assert asyncio.run(_run(batcher, main())) < 1.0
    assert engine.sizes == [2]


def test_full_queue_is_refused() -> None:
    engine = FakeEngine()
    engine.release.clear()  # hold the engine so tiles pile up
    batcher = Batcher(engine, max_batch=4, max_wait_s=0.0, queue_limit=10)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit(_tiles(4, 1), _deadline()))
        await asyncio.sleep(0.05)  # first batch is in the engine now
        second = asyncio.create_task(batcher.submit(_tiles(8, 1), _deadline()))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.submit(_tiles(3, 1), _deadline())
        engine.release.set()
        await asyncio.gather(first, second)

    asyncio.run(_run(batcher, main()))


def test_deadline_answers_and_withdraws_the_tiles() -> None:
    engine = FakeEngine()
    engine.release.clear()
    batcher = Batcher(engine, max_batch=2, max_wait_s=0.0, queue_limit=100)

    async def main() -> None:
        blocker = asyncio.create_task(batcher.submit(_tiles(2, 1), _deadline()))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(_tiles(6, 1), _deadline(0.1))
        assert batcher.depth == 0  # its tiles left the queue
        engine.release.set()
        await blocker
        out, _ = await batcher.submit(_tiles(1, 3), _deadline())  # and service goes on
        np.testing.assert_array_equal(out, _tiles(1, 6))

    asyncio.run(_run(batcher, main()))
    assert engine.sizes == [2, 1]  # the late request's tiles never reached the engine


def test_engine_error_fails_the_whole_batch_and_the_next_one_works() -> None:
    engine = FakeEngine(delay=0.01)
    batcher = Batcher(engine, max_batch=16, max_wait_s=0.05, queue_limit=100)

    async def main() -> None:
        engine.fail_next = True
        results = await asyncio.gather(batcher.submit(_tiles(2, 1), _deadline()),
                                       batcher.submit(_tiles(2, 2), _deadline()),
                                       return_exceptions=True)
        assert all(isinstance(r, BatchFailed) for r in results)
        out, _ = await batcher.submit(_tiles(1, 4), _deadline())
        np.testing.assert_array_equal(out, _tiles(1, 8))

    asyncio.run(_run(batcher, main()))


def test_wrong_output_count_is_an_error_not_a_mixup() -> None:
    batcher = Batcher(lambda x: x[:-1], max_batch=4, max_wait_s=0.0, queue_limit=10)

    async def main() -> None:
        with pytest.raises(BatchFailed):
            await batcher.submit(_tiles(3, 1), _deadline())

    asyncio.run(_run(batcher, main()))


def test_several_workers_run_batches_at_the_same_time() -> None:
    both_running = threading.Barrier(2, timeout=5)

    def engine(x: np.ndarray) -> np.ndarray:
        both_running.wait()  # passes only if two batches are in the engine at once
        return x

    batcher = Batcher(engine, max_batch=2, max_wait_s=0.0, queue_limit=10, workers=2)

    async def main() -> None:
        outs = await asyncio.gather(batcher.submit(_tiles(2, 1), _deadline()),
                                    batcher.submit(_tiles(2, 2), _deadline()))
        assert [float(o[0].mean()) for o in outs] == [1.0, 2.0]

    asyncio.run(_run(batcher, main()))
