"""Bugs of the entry points, each held down: the spool cap under concurrent submissions,
a cancel that lands while a result is written, a good model served beside a broken one,
and the API key on every door that does work."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from app.background.spool import STATE, JobState
from tests.conftest import WEIGHTS
from tests.helpers import make_app, png_bytes, running, set5_crop

PNG = {"content-type": "image/png"}
SMALL = png_bytes(set5_crop("bird", (0, 0, 40, 30)))


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_concurrent_submissions_never_overfill_the_spool(tmp_path: Path) -> None:
    # Each job reserves its input, its result's bound (40x30 at x2, RGB: about 80 KB) and
    # room for its state file (about 4 KB): three fit in the cap, the rest must be refused,
    # however they interleave.
    cap = 300_000

    async def main() -> None:
        app = make_app(spool_dir=tmp_path, spool_max_bytes=cap)
        async with running(app) as c:
            answers = await asyncio.gather(*[
                c.post("/v1/jobs?scale=2", content=SMALL, headers=PNG) for _ in range(20)])
            codes = sorted(r.status_code for r in answers)
            assert codes.count(202) == 3 and codes.count(503) == 17, codes
            assert all("retry-after" in r.headers for r in answers if r.status_code == 503)
            jobs = app.state.jobs
            assert jobs.bytes <= cap
            ids = [r.json()["id"] for r in answers if r.status_code == 202]
            deadline = time.monotonic() + 60
            # Until every result is written and counted (far under its bound, reservations
            # released), the disk never holds more than the cap.
            while any(jobs.entries[i].state.status != "done" for i in ids) or \
                    jobs.bytes != _disk_bytes(tmp_path):
                assert time.monotonic() < deadline
                assert _disk_bytes(tmp_path) <= cap and jobs.bytes <= cap
                await asyncio.sleep(0.01)
            assert jobs.bytes < cap / 4
            r = await c.post("/v1/jobs?scale=2", content=SMALL, headers=PNG)
            assert r.status_code == 202, r.text

    asyncio.run(main())


def test_a_cancel_during_the_result_write_waits_for_it_then_clears(tmp_path: Path) -> None:
    writing, release = threading.Event(), threading.Event()

    async def main() -> None:
        app = make_app(spool_dir=tmp_path)
        spool = app.state.jobs.spool
        real = spool.write_result

        def slow_write(job_id: str, write):  # type: ignore[no-untyped-def]
            writing.set()
            assert release.wait(30)
            return real(job_id, write)

        spool.write_result = slow_write
        async with running(app) as c:
            r = await c.post("/v1/jobs?scale=2", content=SMALL, headers=PNG)
            job_id = r.json()["id"]
            while not writing.is_set():
                await asyncio.sleep(0.01)
            delete = asyncio.create_task(c.delete(f"/v1/jobs/{job_id}"))
            await asyncio.sleep(0.2)
            assert not delete.done()  # it waits for the write in flight
            release.set()
            r = await delete
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            folder = tmp_path / job_id
            assert [p.name for p in folder.iterdir()] == [STATE]  # no result, no partial
            assert JobState.from_json((folder / STATE).read_bytes()).status == "cancelled"
            assert (await c.get(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"

    asyncio.run(main())


def test_a_loaded_model_serves_beside_a_broken_default(tmp_path: Path) -> None:
    (tmp_path / "lsrcnn-lite-x2.onnx").write_bytes(b"not an onnx file")
    (tmp_path / "lsrcnn-lite-x3.onnx").symlink_to(WEIGHTS / "lsrcnn-lite-x3.onnx")

    async def main() -> None:
        app = make_app(model_dir=tmp_path, model_retry_s=0)
        async with running(app) as c:
            ready = await c.get("/health/ready")
            assert ready.status_code == 503  # the default scale's model is what it reports
            assert ready.json()["failed_models"] == ["lsrcnn-lite-x2.onnx"]
            r = await c.post("/upscale?scale=3", content=SMALL, headers=PNG)
            assert r.status_code == 200, r.text
            assert Image.open(io.BytesIO(r.content)).size == (120, 90)
            r = await c.post("/upscale", content=SMALL, headers=PNG)  # the default scale
            assert r.status_code == 503 and "retry-after" in r.headers
            assert (await c.get("/v2/models/lsrcnn-lite-x3/ready")).status_code == 200
            x = np.zeros((1, 1, 8, 8), np.float32)
            r = await c.post("/v2/models/lsrcnn-lite-x3/infer", json={"inputs": [{
                "name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                "data": x.ravel().tolist()}]})
            assert r.status_code == 200, r.text
            r = await c.post("/v1/jobs?scale=3", content=SMALL, headers=PNG)
            assert r.status_code == 202
            job_id = r.json()["id"]
            for _ in range(600):
                view = (await c.get(f"/v1/jobs/{job_id}")).json()
                if view["status"] == "done":
                    break
                await asyncio.sleep(0.05)
            assert view["status"] == "done" and view["model"] == "lsrcnn-lite-x3"

    asyncio.run(main())


def test_the_api_key_guards_jobs_and_v2_infer() -> None:
    async def main() -> None:
        async with running(make_app(api_key="s3cret")) as c:
            tensor = {"inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32",
                                  "data": [0.5] * 16}]}
            for auth in ({}, {"authorization": "Bearer wrong"}):
                r = await c.post("/v1/jobs", content=SMALL, headers={**PNG, **auth})
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
                r = await c.post("/v2/models/lsrcnn-lite-x2/infer", json=tensor, headers=auth)
                assert r.status_code == 401
            assert not app_jobs(c)
            good = {"authorization": "Bearer s3cret"}
            r = await c.post("/v1/jobs", content=SMALL, headers={**PNG, **good})
            assert r.status_code == 202
            job_id = r.json()["id"]
            assert (await c.delete(f"/v1/jobs/{job_id}")).status_code == 401
            assert (await c.delete(f"/v1/jobs/{job_id}", headers=good)).status_code == 200
            r = await c.post("/v2/models/lsrcnn-lite-x2/infer", json=tensor, headers=good)
            assert r.status_code == 200

    def app_jobs(c) -> list:  # type: ignore[no-untyped-def]
        return list(c._transport.app.state.jobs.entries)

    asyncio.run(main())


def test_exif_orientation_is_planned_before_admission(tmp_path: Path) -> None:
    from app.images import imaging

    img = set5_crop("bird", (0, 0, 60, 40))  # 60 wide, 40 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees: 40 wide, 60 high once oriented
    data = png_bytes(img, "JPEG", quality=95, exif=exif.tobytes())
    probed = imaging.probe(data, 10**6, 10**7, 2)
    assert probed.size == (40, 60) and probed.oriented_size == (60, 40)
    png = png_bytes(img, "PNG", exif=exif.tobytes())  # eXIf before the pixels
    assert imaging.probe(png, 10**6, 10**7, 2).oriented_size == (60, 40)

    async def main() -> None:
        app = make_app(spool_dir=tmp_path)
        async with running(app) as c:
            r = await c.post("/upscale?scale=2", content=data,
                             headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (80, 120)
            r = await c.post("/v1/jobs?scale=2", content=data,
                             headers={"content-type": "image/jpeg"})
            state = app.state.jobs.entries[r.json()["id"]].state
            assert (state.plan["height"], state.plan["width"]) == (60, 40)

    asyncio.run(main())
