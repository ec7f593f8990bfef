"""End to end: a real uvicorn process on 127.0.0.1 upscales a Set5 image."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import ROOT, SET5

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> str:
    port = _free_port()
    env = {**os.environ, "LSRCNN_HOST": "127.0.0.1", "LSRCNN_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode() if proc.stdout else "exited")
            time.sleep(0.2)
        else:
            raise TimeoutError("server not ready in 120 s")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            # Graceful: uvicorn finishes, shuts the lifespan down, then re-raises SIGTERM.
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
            log = proc.stdout.read().decode() if proc.stdout else ""
            assert "Application shutdown complete" in log, log[-2000:]
        finally:
            proc.kill()


def test_upscale_a_set5_image_through_uvicorn(server: str) -> None:
    data = (SET5 / "head.png").read_bytes()
    r = httpx.post(f"{server}/upscale?scale=2", content=data,
                   headers={"content-type": "image/png", "x-request-id": "e2e-1"}, timeout=120)
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "e2e-1"
    src = Image.open(io.BytesIO(data))
    out = Image.open(io.BytesIO(r.content))
    assert out.size == (src.width * 2, src.height * 2)
    assert httpx.get(f"{server}/metrics").text.count('route="/upscale",status="200"') == 1
