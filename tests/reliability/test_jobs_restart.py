"""Nothing lost: jobs queued and running when the service stops (SIGTERM) or dies (kill -9)
are found in the spool by the next process and finished, with the pixels `/upscale` gives.
Real servers on 127.0.0.1; heavy (several server starts): run with `pytest -m heavy`."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SET5
from tests.server import start_server

pytestmark = pytest.mark.heavy

# Small tiles on one worker: a 256x256 job is 256 model calls, long enough to be caught
# running, short enough to finish in a few seconds.
ENV = {"LSRCNN_TILE_SIZE": "16", "LSRCNN_TILE_OVERLAP": "4", "LSRCNN_WORKERS": "1"}
CROP = 256


def _start(spool: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with open(log, "ab") as out:
        return start_server("app", {**ENV, "LSRCNN_SPOOL_DIR": str(spool)}, timeout_s=120,
                            output=out)


def _image(name: str) -> bytes:
    buf = io.BytesIO()
    with Image.open(SET5 / f"{name}.png") as img:
        img.convert("RGB").crop((0, 0, CROP, CROP)).save(buf, format="PNG")
    return buf.getvalue()


def _wait(url: str, job_id: str, ok: Callable[[dict], bool], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if ok(view):
            return view
        time.sleep(0.02)
    raise AssertionError(f"job {job_id}: {view}")


@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
def test_queued_and_running_jobs_finish_after_a_restart(how: str, tmp_path: Path) -> None:
    spool, log = tmp_path / "spool", tmp_path / "server.log"
    inputs = {name: _image(name) for name in ("baby", "butterfly", "woman")}
    proc, url = _start(spool, log)
    try:
        ids = {}
        for name, data in inputs.items():
            r = httpx.post(f"{url}/v1/jobs?scale=2", content=data,
                           headers={"content-type": "image/png"}, timeout=30)
            assert r.status_code == 202, r.text
            ids[name] = r.json()["id"]
        _wait(url, ids["baby"], lambda v: v["status"] == "running" and v["tiles_done"] > 0)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        else:
            proc.kill()
            proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    on_disk = {name: json.loads((spool / i / "state.json").read_text())["status"]
               for name, i in ids.items()}
    assert on_disk == {"baby": "running", "butterfly": "queued", "woman": "queued"}

    proc, url = _start(spool, log)
    try:
        for name, job_id in ids.items():
            view = _wait(url, job_id, lambda v: v["status"] in ("done", "failed"))
            assert view["status"] == "done", view
            out = httpx.get(f"{url}{view['result_url']}", timeout=30)
            assert out.status_code == 200
            got = np.asarray(Image.open(io.BytesIO(out.content)))
            assert got.shape == (2 * CROP, 2 * CROP, 3)
            sync = httpx.post(f"{url}/upscale?scale=2", content=inputs[name],
                              headers={"content-type": "image/png"}, timeout=60)
            assert np.array_equal(got, np.asarray(Image.open(io.BytesIO(sync.content)))), name
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert "found again" in log.read_text()
