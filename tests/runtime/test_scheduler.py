"""The scheduler with fake models: admission by cost, fair turns, withdrawal, batching, faults."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from app.runtime.scheduler import Scheduler
from app.runtime.tiling import TilePlan, plan_tiles
from app.runtime.work import (
    BACKGROUND,
    BatchFailed,
    BatchRecord,
    Busy,
    CostModel,
    DeadlineExceeded,
    TileWork,
    TooLarge,
)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for a state of the scheduler or the model, not for a guess of time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.001)


class FakeModel:
    """x2 nearest upscale; records each call's tile ids; optional delay per call."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[list[float]] = []
        self.fail_next = False
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        with self.lock:
            self.calls.append([float(t[0, 0, 0]) for t in x])
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return x.repeat(2, axis=2).repeat(2, axis=3)


class Sink:
    """A job's cut and paste: tiles carry the job's id; pasted tiles are counted."""

    def __init__(self, ident: float, plan: TilePlan) -> None:
        self.ident, self.plan = ident, plan
        self.cut_calls = 0
        self.pasted: list[tuple[int, int]] = []

    def cut(self, r: int, c: int) -> np.ndarray:
        self.cut_calls += 1
        return np.full(self.plan.shape, self.ident, np.float32)

    def paste(self, r: int, c: int, y: np.ndarray) -> None:
        assert y.shape == (2 * self.plan.tile_h, 2 * self.plan.tile_w)
        self.pasted.append((r, c))


def _grid(tiles: int, side: int = 8) -> TilePlan:
    """A plan of `tiles` tiles in one row, side x side each, no overlap."""
    return plan_tiles(side, side * tiles, side, 0)


def _sched(model: FakeModel, **kw: object) -> Scheduler:
    args: dict = {"cost": CostModel(per_pixel_s=1e-4), "workers": 1, "timeout_s": 10.0,
                  "headroom": 1.0, **kw}
    return Scheduler(model, **args)


async def _submit(sched: Scheduler, plan: TilePlan, ident: float, timeout: float = 10.0
                  ) -> Sink:
    sink = Sink(ident, plan)
    job = sched.admit(plan, asyncio.get_running_loop().time() + timeout)
    await sched.run(job, sink.cut, sink.paste)
    return sink


def test_admission_refuses_what_cannot_finish_alone_with_the_largest_input() -> None:
    # 1e-4 s per pixel on 2 workers, 10 s deadline, headroom 0.8: 8 s of wall time.
    sched = _sched(FakeModel(), workers=2, headroom=0.8)

    async def main() -> None:
        sched.admit(plan_tiles(8, 8 * 1000, 8, 0), asyncio.get_running_loop().time() + 10)
        with pytest.raises(TooLarge) as err:  # 256,000 px: 25.6 s of work, 12.8 s on two
            sched.admit(plan_tiles(8, 8 * 4000, 8, 0), asyncio.get_running_loop().time() + 10)
        # The default planner makes one tile of any size: 0.8 * 10 s / 1e-4 s per pixel.
        side = math.isqrt(80_000)
        assert f"largest input that fits is about {side}x{side}" in str(err.value)

    asyncio.run(main())


def test_admission_caps_tiles_per_request() -> None:
    sched = _sched(FakeModel(), max_tiles=10)

    async def main() -> None:
        with pytest.raises(TooLarge, match="11 tiles; the limit per request is 10"):
            sched.admit(_grid(11, 1), asyncio.get_running_loop().time() + 10)

    asyncio.run(main())


def test_busy_when_queued_work_would_pass_the_deadline_with_retry_after() -> None:
    # Each 8x8x100 job is 6.4 s of work; the deadline is 10 s on one worker.
    sched = _sched(FakeModel(), cost=CostModel(per_pixel_s=1e-3))

    async def main() -> None:
        now = asyncio.get_running_loop().time()
        first = sched.admit(_grid(100), now + 10)
        assert sched.drain_s == pytest.approx(6.4)
        with pytest.raises(Busy) as err:
            sched.admit(_grid(100), now + 10)
        assert err.value.retry_after_s == 7  # the drain time, rounded up
        sched.admit(_grid(40), now + 10)  # 2.56 s more still fits: 8.96 s in all
        sched.release(first)
        sched.admit(_grid(100), now + 10)  # room again

    asyncio.run(main())


def test_admission_protects_the_deadlines_of_admitted_jobs() -> None:
    """A new job with a long deadline is refused if fair sharing would make an admitted
    job with a short deadline late."""
    sched = _sched(FakeModel(), cost=CostModel(per_pixel_s=1e-3))

    async def main() -> None:
        now = asyncio.get_running_loop().time()
        sched.admit(_grid(100), now + 7)  # 6.4 s of work, 7 s to do it
        with pytest.raises(Busy):
            sched.admit(_grid(20), now + 100)  # +1.28 s shared: the first would end at 7.68

    asyncio.run(main())


def test_fair_turns_a_small_job_passes_a_big_one() -> None:
    model = FakeModel(delay=0.005)
    sched = _sched(model)

    async def main() -> None:
        big = asyncio.create_task(_submit(sched, _grid(60), 1.0))
        await until(lambda: len(model.calls) >= 5)  # the big job is well under way
        small = await _submit(sched, _grid(3), 2.0)
        assert not big.done()  # the small one finished first
        assert len(small.pasted) == 3
        await big

    asyncio.run(main())
    order = [ids[0] for ids in model.calls]
    first_small = order.index(2.0)
    # From its arrival on, the small job got every other turn, not the end of the queue.
    assert order[first_small : first_small + 6].count(2.0) == 3
    assert order.count(1.0) == 60


def test_a_thin_image_of_many_tiles_does_not_hold_the_model() -> None:
    model = FakeModel(delay=0.002)
    sched = _sched(model, max_tiles=5000)

    async def main() -> float:
        thin = asyncio.create_task(_submit(sched, plan_tiles(1, 2000, 8, 0), 1.0))
        await until(lambda: len(model.calls) >= 3)
        t0 = time.perf_counter()
        await _submit(sched, _grid(2), 2.0)
        waited = time.perf_counter() - t0
        thin.cancel()
        return waited

    assert asyncio.run(main()) < 0.2  # 250 thin tiles would take 0.5 s or more


def test_withdrawn_job_leaves_the_queue_and_costs_at_most_the_tiles_in_flight() -> None:
    model = FakeModel(delay=0.01)
    withdrawn: list[TileWork] = []
    sched = _sched(model, workers=2, on_withdraw=withdrawn.append)

    async def main() -> Sink:
        sink = Sink(1.0, _grid(200))
        job = sched.admit(sink.plan, asyncio.get_running_loop().time() + 10)
        task = asyncio.create_task(sched.run(job, sink.cut, sink.paste))
        await until(lambda: len(model.calls) >= 10)
        task.cancel()  # the client left
        with pytest.raises(asyncio.CancelledError):
            await task
        ran = len(model.calls)
        await until(lambda: not sched.busy)  # every call started has ended
        assert len(model.calls) - ran <= 2  # only the two calls already running
        assert sched.waiting_tiles == 0 and sched.drain_s == 0
        return sink

    sink = asyncio.run(main())
    assert len(withdrawn) == 1 and withdrawn[0].waiting > 150
    assert sink.cut_calls <= len(model.calls)  # tiles were cut lazily, never ahead


def test_deadline_is_deadline_exceeded_and_withdraws() -> None:
    model = FakeModel(delay=0.01)
    sched = _sched(model, cost=CostModel(per_pixel_s=1e-9))

    async def main() -> None:
        with pytest.raises(DeadlineExceeded):
            await _submit(sched, _grid(100), 1.0, timeout=0.1)
        calls = len(model.calls)
        await until(lambda: not sched.busy)
        assert len(model.calls) <= calls + 1
        await _submit(sched, _grid(2), 2.0)  # the service goes on

    asyncio.run(main())


def test_tiles_of_one_shape_from_different_jobs_share_a_call() -> None:
    model = FakeModel(delay=0.02)
    records: list[BatchRecord] = []
    sched = _sched(model, max_batch=4, on_batch=records.append)

    async def main() -> None:
        blocker = asyncio.create_task(_submit(sched, _grid(1, 16), 0.0))  # another shape
        await until(lambda: sched.busy)
        await asyncio.gather(*(_submit(sched, _grid(2), float(i)) for i in range(1, 5)),
                             blocker)

    asyncio.run(main())
    assert max(r.size for r in records) == 4
    assert any(r.jobs > 1 for r in records)  # one call held tiles of several requests


def test_batches_are_padded_to_warmed_sizes() -> None:
    model = FakeModel()
    records: list[BatchRecord] = []
    sched = _sched(model, max_batch=4, batch_sizes=(1, 2, 4), on_batch=records.append)

    async def main() -> None:
        blocker = asyncio.create_task(_submit(sched, _grid(1, 16), 0.0))
        await asyncio.sleep(0)
        await asyncio.gather(*(_submit(sched, _grid(1), float(i)) for i in range(1, 4)),
                             blocker)

    asyncio.run(main())
    assert {len(ids) for ids in model.calls} <= {1, 2, 4}
    assert any(r.padded == 4 and r.size == 3 for r in records)


def test_a_failed_call_fails_its_jobs_and_the_next_job_runs() -> None:
    model = FakeModel()
    sched = _sched(model)

    async def main() -> None:
        model.fail_next = True
        with pytest.raises(BatchFailed):
            await _submit(sched, _grid(3), 1.0)
        sink = await _submit(sched, _grid(3), 2.0)
        assert len(sink.pasted) == 3

    asyncio.run(main())


def test_the_cost_model_follows_the_machine_from_batches() -> None:
    model = FakeModel(delay=0.01)  # 64 px a call: 10 ms where 6.4 ms were predicted
    sched = _sched(model, cost=CostModel(per_pixel_s=1e-4, smoothing=0.5))

    async def main() -> None:
        await _submit(sched, _grid(20), 1.0)

    asyncio.run(main())
    assert 1.2 < sched.cost.factor < 2.5


def test_fit_recovers_the_three_costs() -> None:
    truth = CostModel(per_pixel_s=2e-6, per_line_s=3e-5, per_call_s=1e-3)
    shapes = [(8, 8), (1, 184), (184, 1), (92, 92), (184, 184)]
    fitted = CostModel.fit([(h, w, truth.tile(h, w)) for h, w in shapes])
    for h, w in [*shapes, (1, 5000), (300, 40)]:
        assert fitted.tile(h, w) == pytest.approx(truth.tile(h, w), rel=1e-6)


def _lstm_like(h: int, w: int) -> float:
    """Seconds of a tile as an LSTM spends them: per call, per pixel, per row and column."""
    return 1e-3 + 2e-7 * h * w + 2e-5 * (h + w)


def test_thin_tiles_do_not_poison_the_estimate_of_square_ones() -> None:
    shapes = [(8, 8), (1, 64), (64, 1), (32, 32), (64, 64)]
    cost = CostModel.fit([(h, w, _lstm_like(h, w)) for h, w in shapes])
    square = plan_tiles(64, 640, 64, 0)
    before = cost.estimate(square)
    for _ in range(300):  # a 1 x 19,200 strip, tile after tile
        cost.observe(1, 64, 1, _lstm_like(1, 64))
    assert cost.estimate(square) == pytest.approx(before, rel=0.01)
    # A cost per pixel alone, fitted on the square tile, would call a thin tile 10x cheaper
    # than it is: the error the per-line term removes.
    per_pixel_only = _lstm_like(64, 64) / (64 * 64)
    assert _lstm_like(1, 64) / (per_pixel_only * 64) > 10


def test_stop_fails_waiting_jobs_as_busy() -> None:
    model = FakeModel(delay=0.01)
    sched = _sched(model)

    async def main() -> None:
        task = asyncio.create_task(_submit(sched, _grid(50), 1.0))
        await until(lambda: len(model.calls) >= 2)
        await sched.stop()
        with pytest.raises(Busy):
            await task
        with pytest.raises(Busy):
            sched.admit(_grid(1), asyncio.get_running_loop().time() + 10)

    asyncio.run(main())


def test_the_cost_factor_follows_a_machine_that_got_much_slower() -> None:
    cost = CostModel(per_pixel_s=1e-6)
    for _ in range(200):
        cost.observe(10, 10, 1, 1e-6 * 100 * 10)  # every tile 10x slower than at warm-up
    assert cost.factor == pytest.approx(10, rel=0.05)
    for _ in range(200):
        cost.observe(10, 10, 1, 1e-6 * 100)  # and back
    assert cost.factor == pytest.approx(1, rel=0.05)


def test_a_full_queue_refuses_early_before_any_body() -> None:
    sched = _sched(FakeModel(), cost=CostModel(per_pixel_s=1e-3), timeout_s=5.0)

    async def main() -> None:
        now = asyncio.get_running_loop().time()
        sched.refuse_early()  # empty: nothing to say
        sched.admit(_grid(50), now + 10)  # 3.2 s of work: room for more
        sched.refuse_early()
        sched.admit(_grid(50), now + 10)  # 6.4 s: past the 5 s a request may wait
        with pytest.raises(Busy) as err:
            sched.refuse_early()
        assert err.value.retry_after_s == 7

    asyncio.run(main())


async def _submit_background(sched: Scheduler, plan: TilePlan, ident: float) -> Sink:
    sink = Sink(ident, plan)
    job = sched.admit(plan, math.inf, priority=BACKGROUND)
    await sched.run(job, sink.cut, sink.paste)
    return sink


def test_a_request_overtakes_a_background_job_waiting_only_for_its_running_tiles() -> None:
    model = FakeModel(delay=0.005)
    sched = _sched(model, workers=2)

    async def main() -> None:
        big = asyncio.create_task(_submit_background(sched, _grid(200), 1.0))
        await until(lambda: len(model.calls) >= 4)  # the background job holds both workers
        before = len(model.calls)
        small = await _submit(sched, _grid(6), 2.0)
        assert len(small.pasted) == 6 and not big.done()
        order = [ids[0] for ids in model.calls[before:]]
        last_small = max(i for i, ident in enumerate(order) if ident == 2.0)
        # Every call between its arrival and its end was its own, but for the two
        # background tiles already running (and at most one started beside its last tile);
        # plain turns would have alternated, six of them.
        assert order[: last_small + 1].count(1.0) <= 3
        assert len((await big).pasted) == 200

    asyncio.run(main())


def test_background_work_neither_blocks_nor_is_refused_by_synchronous_admission() -> None:
    # 1e-3 s per pixel: a 100-tile job is 6.4 s of work, a 400-tile one 25.6 s, over the
    # 10 s deadline of synchronous requests.
    sched = _sched(FakeModel(), cost=CostModel(per_pixel_s=1e-3), max_tiles=5000)

    async def main() -> None:
        now = asyncio.get_running_loop().time()
        with pytest.raises(TooLarge):
            sched.admit(_grid(400), now + 10)
        background = sched.admit(_grid(400), math.inf, priority=BACKGROUND)
        assert sched.drain_s == 0 and sched.background_s == pytest.approx(25.6)
        sched.admit(_grid(100), now + 10)  # its queued work does not count against requests
        with pytest.raises(Busy):  # but synchronous work still does
            sched.admit(_grid(100), now + 10)
        sched.release(background)
        assert sched.background_s == 0

    asyncio.run(main())


def test_running_background_tiles_count_against_a_tight_deadline() -> None:
    sched = _sched(FakeModel(), cost=CostModel(per_pixel_s=1e-3))

    async def main() -> None:
        now = asyncio.get_running_loop().time()
        job = sched.admit(_grid(400, 32), math.inf, priority=BACKGROUND)
        job.issued = 1  # one 32x32 tile running: 1.024 s
        sched.admit(_grid(1), now + 1.2)  # 0.064 s after it: in time
        with pytest.raises(Busy):
            sched.admit(_grid(1), now + 1.05)

    asyncio.run(main())


def test_a_stream_of_one_tile_requests_starves_no_one() -> None:
    """Two new one-tile requests arrive per model call, more than it can serve: each still
    waits a bounded number of calls in order of arrival (no stack), and the big request
    beside them keeps getting turns."""
    model = FakeModel(delay=0.002)
    sched = _sched(model, cost=CostModel(per_pixel_s=1e-9), timeout_s=60.0)
    waits: dict[float, int] = {}

    async def small(ident: float) -> None:
        start = len(model.calls)
        await _submit(sched, _grid(1), ident, timeout=60.0)
        waits[ident] = len(model.calls) - start

    async def main() -> None:
        big = asyncio.create_task(_submit(sched, _grid(40), 1.0, timeout=60.0))
        smalls = []
        for k in range(30):
            await until(lambda k=k: len(model.calls) >= k)
            smalls += [asyncio.create_task(small(100.0 + 2 * k)),
                       asyncio.create_task(small(101.0 + 2 * k))]
        await asyncio.gather(*smalls)
        await big

    asyncio.run(main())
    order = [ids[0] for ids in model.calls]
    # Served in order of arrival: the one-tile requests' first (and only) calls are sorted.
    served = [i for i in order if i >= 100.0]
    assert served == sorted(served)
    # The backlog grows by one a call, so a wait is bounded by the requests ahead, twice
    # (turns alternate with the big request): never the unbounded wait of a stack.
    assert max(waits.values()) <= 2 * 60 + 2
    # The big request had every other turn while the stream lasted.
    first_half = order[:60]
    assert first_half.count(1.0) >= 25
