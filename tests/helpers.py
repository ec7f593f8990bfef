"""Shared test helpers: image bytes, and an in-process app with its lifespan running."""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from app.main import create_app
from app.runtime.engine import Engine
from app.settings import Settings
from tests.conftest import SET5, WEIGHTS

T = TypeVar("T")


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def set5_crop(name: str = "bird", box: tuple[int, int, int, int] = (0, 0, 60, 44)) -> Image.Image:
    with Image.open(SET5 / f"{name}.png") as img:
        return img.convert("RGB").crop(box)


def noise(mode: str, w: int, h: int, seed: int = 0) -> Image.Image:
    """Random pixels in RGB, RGBA, L, LA, P (a palette of RGB noise) or 16-bit I;16."""
    rng = np.random.default_rng(seed)
    if mode == "P":
        return noise("RGB", w, h, seed).convert("P")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr)


@contextlib.asynccontextmanager
async def running(app: FastAPI, wait_ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     timeout=60) as client:
            if wait_ready:
                for _ in range(600):
                    if app.state.upscaler.ready or "failed" in app.state.upscaler.reason:
                        break
                    await asyncio.sleep(0.05)
            yield client


# Small tiles and batches keep each test app's warm-up short; the defaults are tested end to end.
# The in-process client's Host is "test".
# ONNX Runtime pinned: most tests hold the service's pixels to ONNX Runtime's own, exactly;
# the runtime choice has tests of its own (tests/runtime/test_choice.py).
TEST_SETTINGS = {"tile_size": 48, "tile_overlap": 8, "max_batch_size": 4, "workers": 2,
                 "engine": "onnxruntime",
                 "allowed_hosts": "test,localhost,127.0.0.1"}


def make_app(engine_class: Callable[[Settings], Engine] | None = None,
             **overrides: object) -> FastAPI:
    """An app with the test settings (and `overrides`); `engine_class` makes its engine."""
    # Each app its own spool: one test's jobs are never another app's to find.
    spool = tempfile.mkdtemp(prefix="lsrcnn-test-spool-")
    settings = Settings(**{**TEST_SETTINGS, "spool_dir": spool, **overrides})
    app = create_app(settings, engine_class(settings) if engine_class else None)
    weakref.finalize(app, shutil.rmtree, spool, True)
    return app


def fake_providers(monkeypatch: pytest.MonkeyPatch, available: list[str], active: list[str]
                   ) -> list[tuple[list, object]]:
    """ONNX Runtime that lists `available` and whose sessions report `active`, running the
    real model on the CPU underneath: the GPU decisions, tested on any machine. Returns the
    list of (providers asked for, session options) of every session made."""
    import onnxruntime as ort

    real = ort.InferenceSession
    asked: list = []

    class Reporting(real):  # type: ignore[misc, valid-type]
        def __init__(self, path: str, options: object = None, providers: list | None = None,
                     **kw: object) -> None:
            asked.append((providers, options))
            super().__init__(path, options, providers=["CPUExecutionProvider"])

        def get_providers(self) -> list[str]:
            return list(active)

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(available))
    monkeypatch.setattr(ort, "InferenceSession", Reporting)
    return asked


def direct(name: str, x: np.ndarray) -> np.ndarray:
    """The model file run by ONNX Runtime itself, no service in between."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(WEIGHTS / f"{name}.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


async def until_status(c: httpx.AsyncClient, job_id: str, statuses: set[str],
                       timeout_s: float = 60.0) -> dict:
    """A job's view once its status is one of `statuses`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = await c.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        if r.json()["status"] in statuses:
            return r.json()
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {statuses}")


async def longest_loop_wait(work: Awaitable[T]) -> tuple[T, float]:
    """`work`'s result, and the longest the event loop made a 1 ms sleep wait past its
    time meanwhile (what a health check would have waited)."""
    worst, stop = 0.0, asyncio.Event()

    async def probe() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - t0 - 0.001)

    watcher = asyncio.create_task(probe())
    try:
        result = await work
    finally:
        stop.set()
        await watcher
    return result, worst
