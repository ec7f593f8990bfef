"""The jobs API in-process: lifecycle, checks at submission, the spool's cap, time to live,
and recovery of a spool left by an earlier process."""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from app.background.spool import INPUT, RESULT, STATE, JobState, Spool, new_id
from tests.helpers import make_app, noise, png_bytes, running, set5_crop, until_status
from tests.server import metric

PNG = {"content-type": "image/png"}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_job_lifecycle_progress_409_and_cancel(tmp_path: Path) -> None:
    slow = png_bytes(noise("RGB", 320, 320))  # 400 tiles of 16: the first job runs a while
    small = png_bytes(set5_crop("bird", (0, 0, 70, 50)))

    async def main() -> None:
        app = make_app(tile_size=16, tile_overlap=4, spool_dir=tmp_path)
        async with running(app) as c:
            r = await c.post("/v1/jobs?scale=2", content=slow, headers=PNG)
            assert r.status_code == 202, r.text
            first = r.json()
            assert r.headers["location"] == f"/v1/jobs/{first['id']}"
            assert re.fullmatch(r"[0-9a-f]{32}", first["id"])  # 128 random bits
            assert first["status"] == "queued" and first["progress"] == 0
            assert first["tiles_total"] > 100 and first["eta_s"] > 0
            assert (tmp_path / first["id"] / INPUT).read_bytes() == slow  # spooled

            r = await c.post("/v1/jobs?scale=2&format=png", files={
                "file": ("bird.png", small, "image/png")})
            assert r.status_code == 202
            second = r.json()["id"]
            r = await c.get(f"/v1/jobs/{second}/result")  # one job runs at a time
            assert r.status_code == 409 and r.json()["status"] == "queued"
            assert "retry-after" in r.headers

            view = await until_status(c, first["id"], {"running"})
            while view["tiles_done"] == 0:
                await asyncio.sleep(0.01)
                view = (await c.get(f"/v1/jobs/{first['id']}")).json()
            assert 0 < view["progress"] < 1 and view["tiles_done"] < view["tiles_total"]
            r = await c.delete(f"/v1/jobs/{first['id']}")
            cancelled = r.json()
            assert r.status_code == 200 and cancelled["status"] == "cancelled"
            # The tiles that ran are still counted; the input is gone, the state kept.
            assert view["tiles_done"] <= cancelled["tiles_done"] < cancelled["tiles_total"]
            assert [p.name for p in (tmp_path / first["id"]).iterdir()] == [STATE]
            assert JobState.from_json((tmp_path / first["id"] / STATE).read_bytes()
                                      ).status == "cancelled"
            again = (await c.get(f"/v1/jobs/{first['id']}")).json()
            assert again["status"] == "cancelled" and again["tiles_done"] == \
                cancelled["tiles_done"] and "result_url" not in again
            # A second DELETE removes what is left.
            assert (await c.delete(f"/v1/jobs/{first['id']}")).status_code == 200
            assert not (tmp_path / first["id"]).exists()
            assert (await c.get(f"/v1/jobs/{first['id']}")).status_code == 404

            done = await until_status(c, second, {"done", "failed"})
            assert done["status"] == "done" and done["progress"] == 1
            assert done["eta_s"] == 0 and done["result_url"] == f"/v1/jobs/{second}/result"
            r = await c.get(done["result_url"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(r.content)).size == (140, 100)
            assert not (tmp_path / second / INPUT).exists()  # only the result is kept

            text = (await c.get("/metrics")).text
            assert metric(text, "lsrcnn_jobs", status="done") == 1
            assert metric(text, "lsrcnn_jobs", status="running") == 0
            assert metric(text, "lsrcnn_jobs_finished_total", status="cancelled") == 1
            spooled = (tmp_path / second / RESULT).stat().st_size
            assert metric(text, "lsrcnn_spool_bytes") >= spooled

    run(main())


def test_a_job_gives_the_same_pixels_as_upscale(tmp_path: Path) -> None:
    data = png_bytes(set5_crop("butterfly", (0, 0, 150, 110)))

    async def main() -> None:
        async with running(make_app(spool_dir=tmp_path)) as c:
            for query in ("scale=3", "scale=2&format=webp&quality=70"):
                r = await c.post(f"/v1/jobs?{query}", content=data, headers=PNG)
                done = await until_status(c, r.json()["id"], {"done", "failed"})
                job = await c.get(done["result_url"])
                sync = await c.post(f"/upscale?{query}", content=data, headers=PNG)
                assert job.headers["content-type"] == sync.headers["content-type"]
                job_px = np.asarray(Image.open(io.BytesIO(job.content)))
                assert job_px.shape[:2] == (110 * done["scale"], 150 * done["scale"])
                assert np.array_equal(job_px, np.asarray(Image.open(io.BytesIO(sync.content))))

    run(main())


def test_bad_jobs_are_refused_at_once_and_a_full_spool_is_503(tmp_path: Path) -> None:
    async def main() -> None:
        app = make_app(spool_dir=tmp_path, spool_max_bytes=20_000, job_max_input_pixels=50_000)
        async with running(app) as c:
            cases = [("scale=5", png_bytes(noise("RGB", 8, 8)), PNG, 422),
                     ("scale=2", b"words", {"content-type": "text/plain"}, 415),
                     ("scale=2", b"not an image", PNG, 415),
                     ("scale=2", b"\x89PNG\r\n\x1a\n" + b"\x07" * 64, PNG, 400),
                     ("scale=2&format=jpeg", png_bytes(noise("RGBA", 8, 8)), PNG, 422),
                     ("scale=2", png_bytes(Image.new("L", (300, 200))), PNG, 413)]
            for query, body, headers, status in cases:
                r = await c.post(f"/v1/jobs?{query}", content=body, headers=headers)
                assert r.status_code == status, (query, r.text)
            assert list(tmp_path.iterdir()) == []  # nothing was spooled
            r = await c.post("/v1/jobs?scale=2", content=png_bytes(noise("RGB", 100, 100)),
                             headers=PNG)  # 30 kB of noise: over the 20 kB cap
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert "spool is full" in r.json()["error"]
            assert (await c.get("/v1/jobs/0123")).status_code == 404
            assert (await c.get(f"/v1/jobs/{'g' * 32}")).status_code == 404
            assert (await c.delete(f"/v1/jobs/{new_id()}")).status_code == 404

    run(main())


def test_a_restart_finds_spooled_jobs_and_finished_ones_expire(tmp_path: Path) -> None:
    """A spool as a stopped or killed process leaves it: a job that was running, one that
    was queued, a submission never acknowledged, an old finished job."""
    spool = Spool(tmp_path)
    img = set5_crop("head", (0, 0, 40, 30))
    ids = []
    for status in ("running", "queued"):
        state = JobState(new_id(), 2, None, 90, "png", 1, 30, 40, 0, status=status)
        spool.create(state, png_bytes(img))
        ids.append(state.id)
    (tmp_path / (new_id() + ".partial")).mkdir()
    old = JobState(new_id(), 2, None, 90, "png", 1, 30, 40, 0, status="done",
                   finished=time.time() - 3600)
    spool.create(old, b"")

    async def main() -> None:
        async with running(make_app(spool_dir=tmp_path, job_ttl_s=2.0)) as c:
            for job_id in ids:
                view = await until_status(c, job_id, {"done", "failed"})
                assert view["status"] == "done"
                r = await c.get(view["result_url"])
                assert Image.open(io.BytesIO(r.content)).size == (80, 60)
            assert (await c.get(f"/v1/jobs/{old.id}")).status_code == 404
            # Past the time to live, the sweeper removes them: wait for that, not for time.
            deadline = time.monotonic() + 30
            while [i for i in ids if (await c.get(f"/v1/jobs/{i}")).status_code != 404]:
                assert time.monotonic() < deadline, "finished jobs outlived their time to live"
                await asyncio.sleep(0.05)
        assert list(tmp_path.iterdir()) == []

    run(main())


def test_spool_writes_are_complete_or_absent(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    state = JobState(new_id(), 3, "webp", 80, "webp", 4, 60, 60, 3)
    spool.create(state, b"abc")
    state.status = "running"
    spool.save(state)
    assert JobState.from_json((tmp_path / state.id / STATE).read_bytes()) == state
    assert spool.write_result(state.id, lambda f: f.write(b"12345")) == 5
    assert sorted(p.name for p in (tmp_path / state.id).iterdir()) == [INPUT, RESULT, STATE]
    (tmp_path / state.id / STATE).write_bytes(b'{"id": "torn')  # a torn write found later
    assert spool.scan() == [] and list(tmp_path.iterdir()) == []
