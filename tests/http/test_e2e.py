"""End to end: a real uvicorn process on 127.0.0.1 upscales a Set5 image."""

from __future__ import annotations

import io
import signal
import subprocess

import httpx
import pytest
from PIL import Image

from tests.conftest import SET5
from tests.server import start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> str:
    proc, url = start_server("app", {}, timeout_s=120, output=subprocess.PIPE)
    try:
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
