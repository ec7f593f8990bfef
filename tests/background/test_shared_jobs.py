"""The shared job store on a real redis-server, in-process: two apps are two replicas.
Any replica answers any job; a dead replica's job is taken over after the lease; DELETE
on one stops the job running on another; Redis down is a 503 on job routes only, and a
Redis restart loses no acknowledged job; the cap and the time to live hold in Redis; moving
payloads never holds the event loop."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import numpy as np
import pytest
from PIL import Image
from redis.exceptions import ConnectionError as RedisConnectionError

from app.background import shared
from app.background.shared import SharedJobs
from app.background.store import CHUNK, Store
from tests.helpers import (
    longest_loop_wait,
    make_app,
    noise,
    png_bytes,
    running,
    set5_crop,
    until_status,
)
from tests.redis_server import RedisServer
from tests.server import metric

PNG = {"content-type": "image/png"}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@asynccontextmanager
async def replicas(url: str, n: int = 2, pulls: tuple[bool, ...] = (True, False),
                   **settings: object
                   ) -> AsyncIterator[list[tuple[httpx.AsyncClient, SharedJobs]]]:
    """n replicas on one Redis; those not in `pulls` take no job until let (`pull`)."""
    async with AsyncExitStack() as stack:
        out = []
        for i in range(n):
            app = make_app(tile_size=16, tile_overlap=4, jobs_store=url, **settings)
            if not pulls[i]:
                idle(app.state.jobs)
            client = await stack.enter_async_context(running(app))
            out.append((client, app.state.jobs))
        yield out


def idle(jobs: SharedJobs) -> None:
    """This replica pulls no job (it still answers every route)."""
    jobs._may_pull = lambda: False  # type: ignore[method-assign]


def pull(jobs: SharedJobs) -> None:
    jobs._may_pull = lambda: True  # type: ignore[method-assign]


def never_done(jobs: SharedJobs) -> None:
    """This replica's jobs run until it stops or dies: however fast the machine, it is
    still running them then."""
    async def forever(*_args: object, **_kwargs: object) -> int:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
    jobs.pipeline.to_file = forever  # type: ignore[method-assign]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_any_replica_answers_and_delete_stops_a_job_on_another(
        redis_server: RedisServer) -> None:
    small = png_bytes(set5_crop("bird", (0, 0, 70, 50)))
    slow = png_bytes(noise("RGB", 800, 800))  # 2,500 tiles of 16: runs a while

    async def main() -> None:
        async with replicas(redis_server.url) as [(a, jobs_a), (b, _)]:  # B only answers
            r = await b.post("/v1/jobs?scale=2", files={"file": ("bird.png", small,
                                                                  "image/png")})
            assert r.status_code == 202, r.text
            job = r.json()
            assert job["status"] == "queued" and job["filename"] == "bird.png"
            done = await until_status(a, job["id"], {"done"})
            assert done["progress"] == 1 and done["tiles_done"] == done["tiles_total"]
            got = await b.get(f"/v1/jobs/{job['id']}/result")  # stored by A, read by B
            assert got.status_code == 200, got.text
            assert 'filename="bird_x2.png"' in got.headers["content-disposition"]
            want = await b.post("/upscale?scale=2", content=small, headers=PNG)
            assert np.array_equal(pixels(got.content), pixels(want.content))
            assert metric((await a.get("/metrics")).text, "lsrcnn_jobs_finished_total",
                          status="done") == 1

            r = await a.post("/v1/jobs?scale=2", content=slow, headers=PNG)
            slow_id = r.json()["id"]
            view = await until_status(b, slow_id, {"running"})
            while view["tiles_done"] == 0 and view["status"] == "running":  # A's beats
                await asyncio.sleep(0.05)
                view = (await b.get(f"/v1/jobs/{slow_id}")).json()
            assert view["replica"] == jobs_a.consumer and view["eta_s"] > 0
            cancelled = (await b.delete(f"/v1/jobs/{slow_id}")).json()
            assert cancelled["status"] == "cancelled"
            for _ in range(100):  # A stops within a beat
                if not jobs_a.entries:
                    break
                await asyncio.sleep(0.05)
            assert not jobs_a.entries
            again = (await a.get(f"/v1/jobs/{slow_id}")).json()
            assert again["status"] == "cancelled" and again["tiles_done"] < \
                again["tiles_total"] and "result_url" not in again
            # A finished job's DELETE removes it, from either replica.
            assert (await a.delete(f"/v1/jobs/{job['id']}")).status_code == 200
            assert (await b.get(f"/v1/jobs/{job['id']}")).status_code == 404
            assert (await b.get(f"/v1/jobs/{job['id']}/result")).status_code == 404
            # A, whose job was stopped under it, still takes the next one.
            r = await b.post("/v1/jobs?scale=2", content=small, headers=PNG)
            assert (await until_status(a, r.json()["id"], {"done"}))["status"] == "done"
            assert metric((await b.get("/metrics")).text, "lsrcnn_jobs_finished_total",
                          status="cancelled") == 1  # counted where the DELETE was answered

    run(main())


def test_a_dead_replicas_job_is_taken_over_after_the_lease(redis_server: RedisServer) -> None:
    slow = png_bytes(noise("RGB", 480, 480))

    async def main() -> None:
        async with replicas(redis_server.url, job_lease_s=1.0) as [(a, jobs_a), (b, jobs_b)]:
            never_done(jobs_a)  # dies running it
            job = (await a.post("/v1/jobs?scale=2", content=slow, headers=PNG)).json()
            await until_status(b, job["id"], {"running"})

            async def dead(*_: object) -> None:  # kill -9 hands nothing back
                raise asyncio.CancelledError
            jobs_a.db.release = dead  # type: ignore[method-assign]
            jobs_a.db.beat = dead  # type: ignore[method-assign]
            for task in jobs_a._tasks:
                task.cancel()
            t0 = time.monotonic()
            pull(jobs_b)
            view = await until_status(b, job["id"], {"running"})
            while view.get("replica") != jobs_b.consumer:
                await asyncio.sleep(0.05)
                view = (await b.get(f"/v1/jobs/{job['id']}")).json()
            assert time.monotonic() - t0 >= 0.5  # not before the lease ran out
            done = await until_status(b, job["id"], {"done", "failed"})
            assert done["status"] == "done", done
            assert metric((await b.get("/metrics")).text, "lsrcnn_jobs_taken_over_total") == 1
            fields = await jobs_b.db.read(job["id"])
            assert fields is not None and fields["attempts"] == "2"
            # The dead replica's consumer, holding nothing now, leaves the group.
            await asyncio.sleep(0.6)
            await jobs_b.db.forget_idle(0.5)
            names = {c["name"].decode() for c in
                     await jobs_b.db.r.xinfo_consumers(jobs_b.db.stream, "replicas")}
            assert jobs_a.consumer not in names
            got = await b.get(f"/v1/jobs/{job['id']}/result")
            want = await b.post("/upscale?scale=2", content=slow, headers=PNG)
            assert np.array_equal(pixels(got.content), pixels(want.content))

    run(main())


def test_redis_down_is_503_on_jobs_only_and_a_restart_loses_no_job(
        redis_server: RedisServer) -> None:
    small = png_bytes(set5_crop("bird", (0, 0, 60, 44)))

    async def main() -> None:
        # The job waits in the queue while Redis dies.
        async with replicas(redis_server.url, n=1, pulls=(False,)) as [(a, jobs_a)]:
            job = (await a.post("/v1/jobs?scale=2", content=small, headers=PNG)).json()
            redis_server.kill()  # kill -9: only the append-only file is left
            r = await a.get(f"/v1/jobs/{job['id']}")
            assert r.status_code == 503 and "jobs store" in r.json()["error"]
            assert r.headers["retry-after"]
            r = await a.post("/v1/jobs?scale=2", content=small, headers=PNG)
            assert r.status_code == 503
            assert (await a.post("/upscale?scale=2", content=small,
                                 headers=PNG)).status_code == 200
            ready = await a.get("/health/ready")
            assert ready.status_code == 200 and ready.json()["jobs"]["available"] is False
            redis_server.start()
            pull(jobs_a)
            done = await until_status(a, job["id"], {"done"})
            assert done["status"] == "done"
            assert (await a.get("/health/ready")).json()["jobs"] == {
                "store": "redis", "available": True}

    run(main())


def test_the_cap_and_the_time_to_live_are_kept_in_redis(redis_server: RedisServer) -> None:
    small = png_bytes(set5_crop("bird", (0, 0, 60, 44)))

    async def main() -> None:
        async with replicas(redis_server.url, n=1, pulls=(False,), spool_max_bytes=200_000,
                            job_ttl_s=1.0) as [(a, jobs_a)]:
            first = await a.post("/v1/jobs?scale=2", content=small, headers=PNG)
            assert first.status_code == 202
            big = png_bytes(noise("RGB", 200, 200))  # its result bound is over the cap
            r = await a.post("/v1/jobs?scale=2", content=big, headers=PNG)
            assert r.status_code == 503 and "full" in r.json()["error"]
            pull(jobs_a)
            await until_status(a, first.json()["id"], {"done"})
            deadline = time.monotonic() + 20
            while (await a.get(f"/v1/jobs/{first.json()['id']}")).status_code != 404:
                assert time.monotonic() < deadline, "the finished job never expired"
                await asyncio.sleep(0.2)
            assert await jobs_a.db.r.hlen(jobs_a.db.bytes_key) == 0  # the cap is free again
            assert await jobs_a.db.r.keys("lsrcnn:job:*") == []

    run(main())


def test_payloads_move_without_holding_the_event_loop(redis_server: RedisServer) -> None:
    """A job input at the body limit (32 MiB) stored and read back: the event loop never
    waits more than 50 ms (health answers meanwhile)."""
    data = np.random.default_rng(0).integers(0, 256, 32 * CHUNK, dtype=np.uint8).tobytes()

    async def main() -> None:
        store = Store(redis_server.url)

        async def there_and_back() -> list[bytes]:
            await store.put_chunks("lsrcnn:test:in", data)
            return await store.get_chunks("lsrcnn:test:in")

        back, worst = await longest_loop_wait(there_and_back())
        await store.r.delete("lsrcnn:test:in")
        await store.close()
        assert b"".join(back) == data
        assert worst < 0.05, f"the event loop waited {worst * 1000:.0f} ms"

    run(main())


@pytest.mark.parametrize("path", ["/v1/jobs/" + "0" * 32, "/v1/jobs/nope"])
def test_unknown_jobs_are_404(redis_server: RedisServer, path: str) -> None:
    async def main() -> None:
        async with replicas(redis_server.url, n=1) as [(a, _)]:
            assert (await a.get(path)).status_code == 404
            assert (await a.delete(path)).status_code == 404

    run(main())


def test_a_job_that_kills_its_replicas_fails_instead_of_a_fourth_takeover(
        redis_server: RedisServer) -> None:
    small = png_bytes(set5_crop("bird", (0, 0, 60, 44)))

    async def main() -> None:
        async with replicas(redis_server.url, n=1, pulls=(False,)) as [(a, jobs_a)]:
            job = (await a.post("/v1/jobs?scale=2", content=small, headers=PNG)).json()
            # As if three replicas had died running it (a graceful hand-back does not count).
            await jobs_a.db.r.hset(jobs_a.db.job(job["id"]), "attempts", 3)
            pull(jobs_a)
            view = await until_status(a, job["id"], {"done", "failed"})
            assert view["status"] == "failed" and "taken over 3 times" in view["error"]
            assert metric((await a.get("/metrics")).text, "lsrcnn_jobs_finished_total",
                          status="failed") == 1

    run(main())


def test_a_stopping_replica_hands_its_job_back_at_once(redis_server: RedisServer) -> None:
    slow = png_bytes(noise("RGB", 480, 480))

    async def main() -> None:
        # A 30 s lease: a hand-back must not wait for it.
        app_b = make_app(tile_size=16, tile_overlap=4, jobs_store=redis_server.url)
        idle(app_b.state.jobs)
        async with running(app_b) as b:
            app_a = make_app(tile_size=16, tile_overlap=4, jobs_store=redis_server.url)
            never_done(app_a.state.jobs)  # A stops with the job running, however fast
            async with running(app_a) as a:
                job = (await a.post("/v1/jobs?scale=2", content=slow, headers=PNG)).json()
                await until_status(a, job["id"], {"running"})
            # A has stopped (SIGTERM's path): the job is queued again, its attempt undone.
            assert (await b.get(f"/v1/jobs/{job['id']}")).json()["status"] == "queued"
            pull(app_b.state.jobs)
            t0 = time.monotonic()
            view = await until_status(b, job["id"], {"running", "done"})
            assert time.monotonic() - t0 < 10
            assert (await until_status(b, job["id"], {"done"}))["status"] == "done"
            fields = await app_b.state.jobs.db.read(job["id"])
            assert fields is not None and fields["attempts"] == "1", view

    run(main())



@pytest.mark.parametrize("swallowed", [0, 1])
def test_a_stop_ends_even_when_the_client_turns_its_cancel_into_an_error(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, swallowed: int) -> None:
    """redis 8.1 was seen raising its own error for a call cancelled mid-flight; a loop that
    waited that error out never stopped, and neither did the process. With `swallowed`, the
    first cancellation is lost outright: the stop cancels again after its wait."""
    monkeypatch.setattr(shared, "STOP_WAIT_S", 2.0)

    async def main() -> None:
        app = make_app(jobs_store=redis_server.url)  # kept: its spool goes with it
        jobs: SharedJobs = app.state.jobs
        inside = {"take": asyncio.Event(), "sweep": asyncio.Event()}

        def cancel_becomes_an_error(name: str):  # type: ignore[no-untyped-def]
            async def call(*_args: object, **_kwargs: object) -> None:
                inside[name].set()
                lost = swallowed
                while True:
                    try:
                        await asyncio.sleep(60)
                    except asyncio.CancelledError:
                        if lost:
                            lost -= 1
                            asyncio.current_task().uncancel()  # type: ignore[union-attr]
                            continue
                        raise RedisConnectionError("Connection closed by server.") from None
            return call

        pull(jobs)
        jobs.db.take = cancel_becomes_an_error("take")  # type: ignore[method-assign]
        jobs.db.sweep = cancel_becomes_an_error("sweep")  # type: ignore[method-assign]
        await jobs.start()
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in inside.values())), 10)
        t0 = time.monotonic()
        await asyncio.wait_for(jobs.stop(), 20)
        # At the first cancellation that reaches them; else after one more wait.
        assert time.monotonic() - t0 < 2.0 * swallowed + 1.5
        # Ended by their cancellation, not by a return that would hide a swallowed one.
        assert all(task.cancelled() for task in jobs._tasks)

    run(main())


async def queued_and_started(db: Store, job_id: str, consumer: str) -> str:
    """A job submitted, taken and started (its first attempt) by `consumer`, as the
    replicas do it, straight on the store; its stream id."""
    await db.ensure_group()
    assert (await db.admit(job_id, 10, 1000))[0]
    assert await db.commit(job_id, b"{}", 1.0)
    got = await db.take(consumer, 60_000, block_ms=100)
    assert got is not None and got[1] == job_id
    assert await db.start(job_id, got[0], consumer) == 1
    return got[0]


def test_a_beat_that_lands_after_the_hand_back_leaves_the_job_to_be_taken(
        redis_server: RedisServer) -> None:
    """A stopping replica's last beat may reach Redis after its hand-back (a retried send):
    it must not make the job look held again, or it would wait a whole lease."""
    async def main() -> None:
        db = Store(redis_server.url)
        try:
            lease_ms = 60_000
            msg = await queued_and_started(db, "j", "a")
            await db.release("j", msg, "a", lease_ms)
            assert await db.beat("j", msg, "a", 5, 1.0) == "queued"
            assert await db.take("b", lease_ms, block_ms=100) == (msg, "j")
            assert await db.start("j", msg, "b") == 1  # the hand-back was not an attempt
        finally:
            await db.close()

    run(main())


def test_a_finish_removes_what_earlier_attempts_stored(redis_server: RedisServer) -> None:
    """A replica that lost the store (or died) while storing its result leaves part of it;
    the attempt that finishes the job removes it, rather than leaving it to expire."""
    async def main() -> None:
        db = Store(redis_server.url)
        try:
            msg = await queued_and_started(db, "j", "a")
            await db.r.hset(db.result_key("j", 1), "0", b"part of a result")
            await db.r.expire(db.result_key("j", 1), 600)
            assert await db.take("b", 0, block_ms=100) == (msg, "j")  # a's lease is over
            assert await db.start("j", msg, "b") == 2
            await db.r.hset(db.result_key("j", 2), "0", b"the result")
            assert await db.finish("j", msg, "b", "done", "", db.result_key("j", 2), 10, 10,
                                   3600)
            assert await db.r.keys(db.job("j") + ":out:*") == [
                db.result_key("j", 2).encode()]
        finally:
            await db.close()

    run(main())
