"""The edge in-process: checks before model work, formats, body timeout, disconnects,
shutdown, per-model faults, error logs, OpenAPI, security headers, origin and API key."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.main import create_app
from app.runtime.engine import Engine
from app.settings import Settings
from tests.conftest import WEIGHTS
from tests.helpers import TEST_SETTINGS, make_app, noise, png_bytes, running

PNG = {"content-type": "image/png"}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


class Counting(Engine):
    calls = 0

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return super().run(name, x)


def _wide(mode: str, fmt: str, w: int, **kw: object) -> bytes:
    return png_bytes(Image.new(mode, (w, 1)), fmt, **kw)


@pytest.mark.parametrize(("query", "body", "names"), [
    ("scale=4&format=webp", _wide("RGB", "PNG", 4100), "16383"),  # 16,400 px > WebP's side
    ("scale=4", _wide("RGB", "WEBP", 4100), "16383"),  # WebP in, WebP out by default
    ("scale=4", _wide("RGB", "JPEG", 16400), "65500"),  # 65,600 px > libjpeg's side
    ("scale=2&format=jpeg", png_bytes(noise("RGBA", 300, 300)), "alpha"),
    ("scale=2&format=jpeg", png_bytes(noise("P", 40, 40), transparency=0), "alpha"),
    ("scale=2&format=jpeg", png_bytes(noise("RGBA", 40, 40), "WEBP"), "alpha"),
])
def test_output_limits_are_422_before_any_model_call(query: str, body: bytes,
                                                     names: str) -> None:
    settings = Settings(**TEST_SETTINGS)
    engine = Counting(settings)

    async def main() -> None:
        async with running(create_app(settings, engine)) as c:
            engine.calls = 0
            t0 = time.perf_counter()
            r = await c.post(f"/upscale?{query}", content=body, headers=PNG)
            assert r.status_code == 422, r.text
            assert names in r.json()["error"] and engine.calls == 0
            assert time.perf_counter() - t0 < 1.0

    run(main())


def _ico_bomb() -> bytes:
    # An ICO directory claiming a PNG entry: Pillow would decode it to read its size.
    inner = png_bytes(Image.new("L", (256, 256)))
    return (b"\x00\x00\x01\x00\x01\x00" + bytes([0, 0, 0, 0]) + b"\x01\x00\x20\x00"
            + len(inner).to_bytes(4, "little") + (22).to_bytes(4, "little") + inner)


@pytest.mark.parametrize(("body", "status"), [
    (_ico_bomb(), 415),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n", 415),
    (png_bytes(noise("RGB", 8, 8), "PPM"), 415),
    (png_bytes(noise("RGB", 8, 8), "TGA"), 415),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", 415),  # RIFF but not WebP
    (b"RIFF\x10\x00\x00\x00WEBPVP8 ", 400),  # WebP signature, broken
])
def test_only_the_accepted_formats_are_decoded(body: bytes, status: int) -> None:
    async def main() -> None:
        async with running(make_app()) as c:
            r = await c.post("/upscale?scale=2", content=body, headers=PNG)
            assert r.status_code == status, r.text
            if status == 415:
                assert "PNG, JPEG, WebP, GIF, BMP, TIFF" in r.json()["error"]

    run(main())


def _frames(fmt: str, n: int) -> bytes:
    frames = [noise("RGB", 16, 16, seed=i) for i in range(n)]
    return png_bytes(frames[0], fmt, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF"])
def test_multi_frame_input_is_422_and_one_frame_is_served(fmt: str) -> None:
    async def main() -> None:
        async with running(make_app()) as c:
            r = await c.post("/upscale?scale=2", content=_frames(fmt, 3), headers=PNG)
            assert r.status_code == 422 and "frame" in r.json()["error"]
            r = await c.post("/upscale?scale=2", content=_frames(fmt, 1), headers=PNG)
            assert r.status_code == 200

    run(main())


def _trickle(data: bytes, pause: float):  # type: ignore[no-untyped-def]
    async def gen():  # type: ignore[no-untyped-def]
        for i in range(0, len(data), 64):
            yield data[i : i + 64]
            await asyncio.sleep(pause)
    return gen()


def test_a_slow_body_gets_408_after_the_client_timeout() -> None:
    body = png_bytes(noise("RGB", 40, 40))

    async def main() -> None:
        async with running(make_app(client_timeout_s=0.3)) as c:
            t0 = time.perf_counter()
            r = await c.post("/upscale?scale=2", content=_trickle(body, 0.05), headers=PNG)
            assert r.status_code == 408 and "client timeout" in r.json()["error"]
            assert r.headers["connection"] == "close" and time.perf_counter() - t0 < 1.5
            r = await c.post("/upscale?scale=2", content=body, headers=PNG)
            assert r.status_code == 200

    run(main())


async def _call(app, path: str, messages: list[dict], headers=None):  # type: ignore[no-untyped-def]
    """Drive the ASGI app directly with a scripted receive; return what it sent."""
    sent: list[dict] = []
    queue = list(messages)

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "root_path": "", "server": ("test", 80),
             "client": ("127.0.0.1", 1),
             "headers": [(b"host", b"test"), *(headers or [(b"content-type", b"image/png")])]}
    await app(scope, receive, send)
    return sent


def test_a_client_that_leaves_mid_body_is_info_and_499(caplog) -> None:  # type: ignore[no-untyped-def]
    async def main() -> str:
        app = make_app()
        async with running(app) as c:
            sent = await _call(app, "/upscale?scale=2", [
                {"type": "http.request", "body": b"\x89PNG\r\n", "more_body": True},
                {"type": "http.disconnect"}],
                headers=[(b"content-type", b"image/png"), (b"x-request-id", b"gone-1")])
            assert sent == []  # nobody to answer
            return (await c.get("/metrics")).text

    with caplog.at_level("INFO"):
        text = run(main())
    assert 'lsrcnn_requests_total{route="/upscale",status="499"} 1.0' in text
    assert 'status="500"' not in text
    gone = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == "gone-1"]
    assert any(r.getMessage() == "client disconnected" and r.levelno == logging.INFO
               for r in gone)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


def test_shutdown_turns_ready_off_refuses_new_work_and_answers_stragglers() -> None:
    async def main() -> None:
        app = make_app(graceful_timeout_s=0.5)
        async with running(app) as c:
            straggler = asyncio.create_task(c.post(  # a body that never finishes
                "/upscale?scale=2", content=_trickle(b"\x89PNG" * 1000, 0.05), headers=PNG))
            await asyncio.sleep(0.1)
            app.state.drain.begin()
            r = await c.get("/health/ready")
            assert r.status_code == 503 and r.json()["reason"] == "shutting down"
            assert (await c.get("/health/live")).status_code == 200
            r = await c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 8, 8)),
                             headers=PNG)
            assert r.status_code == 503 and r.json()["error"] == "shutting down"
            r = await straggler
            assert r.status_code == 503 and "grace period" in r.json()["error"]
            assert r.headers["content-type"] == "application/json"

    run(main())


def _models(tmp_path: Path, *names: str) -> None:
    for name in names:
        shutil.copy(WEIGHTS / name, tmp_path / name)


def test_a_corrupt_model_is_skipped_the_others_served(tmp_path: Path) -> None:
    _models(tmp_path, "lsrcnn-lite-x2.onnx", "lsrcnn-lite-x4.onnx")
    (tmp_path / "broken-x3.onnx").write_bytes(b"\x08\x07not a model" * 50)

    async def main() -> None:
        async with running(make_app(model_dir=tmp_path)) as c:
            r = await c.get("/health/ready")
            assert r.status_code == 200, r.text
            assert r.json()["scales"] == [2, 4]
            assert r.json()["failed_models"] == ["broken-x3.onnx"]
            assert str(tmp_path) not in r.text
            ok = await c.post("/upscale?scale=4", content=png_bytes(noise("RGB", 8, 8)),
                              headers=PNG)
            assert ok.status_code == 200
            text = (await c.get("/metrics")).text
            assert 'lsrcnn_model_load_failures_total{file="broken-x3.onnx"} 1.0' in text

    run(main())


def test_without_the_default_model_not_ready_then_retried(tmp_path: Path) -> None:
    _models(tmp_path, "lsrcnn-lite-x4.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"junk")

    async def main() -> None:
        app = make_app(model_dir=tmp_path, model_retry_s=0.2)
        async with running(app) as c:
            r = await c.get("/health/ready")
            assert r.status_code == 503 and "default scale x2" in r.json()["reason"]
            assert r.json()["failed_models"] == ["broken.onnx"] and str(tmp_path) not in r.text
            _models(tmp_path, "lsrcnn-lite-x2.onnx")  # the volume fills in
            for _ in range(200):
                if app.state.upscaler.ready:
                    break
                await asyncio.sleep(0.05)
            assert (await c.get("/health/ready")).status_code == 200

    run(main())


class FailingRunner:
    """Stands in for a model's runner whose run raises as ONNX Runtime does."""

    engine, precision, provider = "onnxruntime", "fp32", "CPUExecutionProvider"

    def run(self, x: object) -> None:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected fault")

    def release(self) -> bool:
        return False


def test_a_failed_model_call_logs_the_cause_traceback_and_request_ids(caplog) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        app = make_app(max_batch_size=4)
        async with running(app) as c:
            engine = app.state.upscaler.engine
            name = engine.model_for(2)
            engine.runners[name] = FailingRunner()
            rs = await asyncio.gather(*(
                c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 8, 8, seed=i)),
                       headers={**PNG, "x-request-id": f"fail-{i}"}) for i in range(2)))
            assert [r.status_code for r in rs] == [500, 500]
            assert all(r.json()["error"] == "inference failed" for r in rs)

    with caplog.at_level("INFO"):
        run(main())
    model = [r for r in caplog.records
             if r.name == "app.runtime.engine" and r.levelno == logging.ERROR]
    assert model and model[0].exc_info and "injected fault" in model[0].getMessage()
    fid = model[0].fields["failure_id"]
    per_request = {r.fields["request_id"]: r.fields for r in caplog.records
                   if r.name == "app.http.errors"}
    batches = [r for r in caplog.records if r.name == "app.runtime.scheduler"]
    assert {rid for r in batches for rid in r.fields["request_ids"]} == {"fail-0", "fail-1"}
    assert set(per_request) == {"fail-0", "fail-1"}
    assert all("injected fault" in f["cause"] and f["failure_id"] for f in per_request.values())
    assert fid in {f["failure_id"] for f in per_request.values()}


def test_openapi_tells_the_truth() -> None:
    async def main() -> None:
        async with running(make_app(), wait_ready=False) as c:
            spec = (await c.get("/openapi.json")).json()
            up = spec["paths"]["/upscale"]["post"]
            body = up["requestBody"]["content"]
            assert {"image/*", "multipart/form-data"} <= set(body)
            assert body["multipart/form-data"]["schema"]["required"] == ["file"]
            codes = set(up["responses"])
            assert {"200", "400", "401", "408", "413", "415", "422", "500", "503",
                    "504"} <= codes
            for code in codes - {"200"}:
                schema = up["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}
            assert set(up["responses"]["200"]["content"]) == {"image/png", "image/jpeg",
                                                              "image/webp"}
            metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            assert set(metrics) == {"text/plain"}
            assert (await c.get("/docs")).status_code == 404
        async with running(make_app(docs=True), wait_ready=False) as c:
            assert (await c.get("/docs")).status_code == 200

    run(main())


def test_every_answer_has_nosniff_and_no_server_header() -> None:
    async def main() -> None:
        async with running(make_app(max_body_bytes=100)) as c:
            answers = [await c.get("/health/live"), await c.get("/nowhere"),
                       await c.post("/upscale", content=b"x" * 200, headers=PNG),
                       await c.post("/upscale", content=png_bytes(noise("RGB", 4, 4))[:90],
                                    headers=PNG)]
            for r in answers:
                assert r.headers["x-content-type-options"] == "nosniff"
                assert "server" not in r.headers
            assert answers[2].status_code == 413
            assert answers[2].json()["request_id"] == answers[2].headers["x-request-id"]

    run(main())


def test_cross_origin_posts_are_refused_unless_allowed() -> None:
    img = png_bytes(noise("RGB", 8, 8))

    async def main() -> None:
        async with running(make_app()) as c:
            r = await c.post("/upscale", files={"file": ("a.png", img, "image/png")},
                             headers={"origin": "https://evil.example"})
            assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
            r = await c.post("/upscale", content=img, headers={**PNG, "origin": "http://test"})
            assert r.status_code == 200  # same origin
        async with running(make_app(cors_origins="https://app.example")) as c:
            r = await c.post("/upscale", content=img,
                             headers={**PNG, "origin": "https://app.example"})
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == "https://app.example"
            r = await c.options("/upscale", headers={
                "origin": "https://evil.example", "access-control-request-method": "POST"})
            assert "access-control-allow-origin" not in r.headers

    run(main())


def test_api_key_guards_upscale_but_not_health() -> None:
    img = png_bytes(noise("RGB", 8, 8))

    async def main() -> None:
        async with running(make_app(api_key="s3cret")) as c:
            r = await c.post("/upscale", content=img, headers=PNG)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            r = await c.post("/upscale", content=img,
                             headers={**PNG, "authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = await c.post("/upscale", content=img,
                             headers={**PNG, "authorization": "Bearer s3cret"})
            assert r.status_code == 200
            assert Image.open(io.BytesIO(r.content)).size == (16, 16)
            assert (await c.get("/health/ready")).status_code == 200

    run(main())
