"""The HTTP API in-process (httpx over ASGI) with the shipped models."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image
from prometheus_client import generate_latest

from app.runtime.engine import Engine, EngineError
from app.runtime.tiling import plan_tiles
from app.settings import Settings
from tests.conftest import WEIGHTS
from tests.helpers import TEST_SETTINGS, make_app, noise, png_bytes, running, set5_crop

PNG = {"content-type": "image/png"}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_upscale_raw_body_all_scales_with_headers() -> None:
    img = set5_crop()

    async def main() -> None:
        async with running(make_app()) as c:
            for scale in (2, 3, 4):
                r = await c.post(f"/upscale?scale={scale}", content=png_bytes(img),
                                 headers={**PNG, "X-Request-ID": f"abc-{scale}"})
                assert r.status_code == 200, r.text
                assert r.headers["content-type"] == "image/png"
                assert r.headers["x-request-id"] == f"abc-{scale}"
                timing = r.headers["server-timing"]
                for stage in ("decode", "queue", "inference", "tiles", "first-byte"):
                    assert f"{stage};dur=" in timing
                out = Image.open(io.BytesIO(r.content))
                assert out.size == (60 * scale, 44 * scale) and out.mode == "RGB"

    run(main())


def test_output_is_sharper_than_bicubic_on_a_real_image() -> None:
    """The service's x2 of a downscaled Set5 image is closer to the original than bicubic."""
    from model.imaging import bicubic_down, bicubic_up, y_of
    from model.quality import psnr

    hr = set5_crop("butterfly", (0, 0, 128, 128))
    lr = bicubic_down(hr, 2)

    async def main() -> bytes:
        async with running(make_app()) as c:
            r = await c.post("/upscale?scale=2", content=png_bytes(lr), headers=PNG)
            assert r.status_code == 200
            return r.content

    sr = Image.open(io.BytesIO(run(main()))).convert("RGB")
    assert psnr(y_of(sr), y_of(hr), 2) > psnr(y_of(bicubic_up(lr, 2)), y_of(hr), 2) + 0.5


def test_multipart_upload_and_formats() -> None:
    async def main() -> None:
        async with running(make_app()) as c:
            files = {"file": ("x.png", png_bytes(noise("RGB", 20, 12)), "image/png")}
            r = await c.post("/upscale?scale=2&format=jpeg&quality=80", files=files)
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            assert Image.open(io.BytesIO(r.content)).size == (40, 24)
            jpg = png_bytes(noise("RGB", 20, 12), "JPEG")
            r = await c.post("/upscale?scale=2", content=jpg,
                             headers={"content-type": "image/jpeg"})
            assert r.headers["content-type"] == "image/jpeg"  # default: the input's format
            r = await c.post("/upscale?scale=2&format=webp", content=jpg,
                             headers={"content-type": "image/jpeg"})
            assert r.headers["content-type"] == "image/webp"

    run(main())


def test_alpha_and_grayscale_survive_the_service() -> None:
    async def main() -> None:
        async with running(make_app()) as c:
            for mode in ("RGBA", "LA", "L"):
                r = await c.post("/upscale?scale=2", content=png_bytes(noise(mode, 16, 10)),
                                 headers=PNG)
                out = Image.open(io.BytesIO(r.content))
                assert r.status_code == 200 and out.mode == mode and out.size == (32, 20)

    run(main())


def test_large_image_is_tiled() -> None:
    img = set5_crop("baby", (0, 0, 250, 130))

    async def main() -> None:
        async with running(make_app(tile_size=64, tile_overlap=8)) as c:
            r = await c.post("/upscale?scale=2", content=png_bytes(img), headers=PNG)
            assert r.status_code == 200
            plan = plan_tiles(130, 250, 64, 8)
            assert int(r.headers["x-tiles"]) == plan.count == 8
            assert float(r.headers["x-tile-overhead"]) == pytest.approx(plan.overhead, abs=1e-3)
            assert Image.open(io.BytesIO(r.content)).size == (500, 260)

    run(main())


def _error(r) -> dict:  # type: ignore[no-untyped-def]
    body = r.json()
    assert {"error", "request_id"} <= set(body) <= {"error", "request_id", "reason",
                                                   "largest_side"}
    assert body["request_id"] == r.headers["x-request-id"]
    return body


@pytest.mark.parametrize(("query", "content", "headers", "status"), [
    ("scale=5", b"x", PNG, 422),
    ("scale=0", b"x", PNG, 422),
    ("scale=two", b"x", PNG, 422),
    ("scale=2&format=gif", b"x", PNG, 422),
    ("scale=2&quality=0", b"x", PNG, 422),
    ("scale=2", b"hello", {"content-type": "text/plain"}, 415),
    ("scale=2", b"plain words, not pixels", PNG, 415),
    ("scale=2", b"\x89PNG\r\n\x1a\n" + b"\x07" * 64, PNG, 400),
    ("scale=2", b"", PNG, 400),
])
def test_bad_requests_get_clear_errors_and_the_service_goes_on(
        query: str, content: bytes, headers: dict, status: int) -> None:
    async def main() -> None:
        async with running(make_app()) as c:
            r = await c.post(f"/upscale?{query}", content=content, headers=headers)
            assert r.status_code == status, r.text
            assert "Traceback" not in _error(r)["error"]
            ok = await c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 8, 8)),
                              headers=PNG)
            assert ok.status_code == 200

    run(main())


def test_truncated_image_is_400() -> None:
    data = png_bytes(set5_crop("bird", (0, 0, 200, 200)))

    async def main() -> None:
        async with running(make_app()) as c:
            r = await c.post("/upscale?scale=2", content=data[: len(data) // 3], headers=PNG)
            assert r.status_code == 400 and _error(r)

    run(main())


def test_size_limits_are_413() -> None:
    bomb = png_bytes(Image.new("L", (12000, 12000)), optimize=True)

    async def main() -> None:
        async with running(make_app(max_body_bytes=400_000, max_input_pixels=1_000_000)) as c:
            big = png_bytes(noise("RGB", 400, 400))  # ~480 kB of noise
            r = await c.post("/upscale?scale=2", content=big, headers=PNG)
            assert r.status_code == 413 and _error(r)
            r = await c.post("/upscale?scale=2", content=bomb, headers=PNG)
            assert r.status_code == 413 and "pixels" in _error(r)["error"]

    run(main())


def test_not_ready_before_models_load_then_ready() -> None:
    loaded = threading.Event()

    class HeldEngine(Engine):
        """Loads only once the test says so: the not-ready window is the test's to see."""

        def load(self) -> None:
            assert loaded.wait(30)
            super().load()

    async def main() -> None:
        app = make_app(HeldEngine)
        async with running(app, wait_ready=False) as c:
            r = await c.get("/health/ready")
            assert r.status_code == 503, r.text
            assert r.json()["status"] == "not ready" and "Retry-After" in r.headers
            r2 = await c.post("/upscale?scale=2", content=b"x", headers=PNG)
            assert r2.status_code == 503
            loaded.set()
            for _ in range(600):
                if app.state.upscaler.ready:
                    break
                await asyncio.sleep(0.05)
            for path in ("/health/ready", "/v2/health/ready", "/health/live", "/v2/health/live"):
                assert (await c.get(path)).status_code == 200

    run(main())


def test_failed_load_is_not_ready_and_says_why(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with running(make_app(model_dir=tmp_path)) as c:
            r = await c.get("/health/ready")
            assert r.status_code == 503 and "default scale x2" in r.json()["reason"]
            assert (await c.get("/health/live")).status_code == 200

    run(main())


def test_models_and_metrics_endpoints() -> None:
    async def main() -> None:
        async with running(make_app()) as c:
            await c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 30, 30)), headers=PNG)
            models = (await c.get("/v1/models")).json()["models"]
            # Every bundled file, by scale then name: per scale a clean model (the default)
            # and a photo model, and at x2 the photo model's mild, medium and strong strengths.
            shipped = sorted((int(p.stem[-1]), p.stem) for p in WEIGHTS.glob("*.onnx"))
            assert [(m["scale"], m["name"]) for m in models] == shipped
            assert [m["name"] for m in models if m["default_for_scale"]] == [
                "lsrcnn-lite-x2", "lsrcnn-lite-x3", "lsrcnn-lite-x4"]
            assert all(m["kind"] == ("photo" if "-photo" in m["name"] else "clean")
                       for m in models)
            assert {m["strength"] for m in models} == {"", "mild", "medium", "strong"}
            assert all(m["arch"] == "lsrcnn" and m["ready"] for m in models)
            assert all(m["provider"] == "CPUExecutionProvider" for m in models)
            assert all(m["preset"] == "lsrcnn-lite" and "validation_psnr" in m["card"]
                       for m in models)
            text = (await c.get("/metrics")).text
            for name in ("lsrcnn_requests_total", "lsrcnn_request_seconds_bucket",
                         "lsrcnn_queue_seconds_bucket", "lsrcnn_inference_seconds_bucket",
                         "lsrcnn_batch_size_bucket", "lsrcnn_queue_depth",
                         "lsrcnn_tiles_total", "lsrcnn_output_pixels_total",
                         "lsrcnn_model_info"):
                assert name in text, name
            assert 'lsrcnn_requests_total{route="/upscale",status="200"} 1.0' in text
            assert 'lsrcnn_output_pixels_total{model="lsrcnn-lite-x2",scale="2"} 3600.0' in text
            assert 'provider="CPUExecutionProvider"' in text
            assert 'arch="lsrcnn"' in text

    run(main())


def test_concurrent_requests_are_batched_together() -> None:
    """Eight one-tile requests at once: the model sees fewer, larger batches."""
    async def main() -> str:
        app = make_app(max_batch_size=8)
        async with running(app) as c:
            imgs = [png_bytes(noise("RGB", 24, 24, seed=i)) for i in range(8)]
            rs = await asyncio.gather(*(c.post("/upscale?scale=2", content=b, headers=PNG)
                                        for b in imgs))
            assert all(r.status_code == 200 for r in rs)
            return (await c.get("/metrics")).text

    text = run(main())
    x2 = '{model="lsrcnn-lite-x2",scale="2"}'
    count = next(line for line in text.splitlines()
                 if line.startswith(f"lsrcnn_batch_size_count{x2}"))
    total = next(line for line in text.splitlines()
                 if line.startswith(f"lsrcnn_batch_size_sum{x2}"))
    batches, tiles = float(count.split()[-1]), float(total.split()[-1])
    assert tiles == 8 and batches < 8  # tiles of different requests shared a model call


class BrokenOnce(Engine):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.armed = False

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        if self.armed:
            self.armed = False
            raise EngineError("injected failure")
        return super().run(name, x)


def test_engine_error_is_a_500_and_the_next_request_works() -> None:
    settings = Settings(**TEST_SETTINGS)
    engine = BrokenOnce(settings)

    async def main() -> None:
        from app.main import create_app

        async with running(create_app(settings, engine)) as c:
            engine.armed = True
            r = await c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 8, 8)), headers=PNG)
            assert r.status_code == 500
            assert _error(r)["error"] == "inference failed"
            r = await c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 8, 8)), headers=PNG)
            assert r.status_code == 200

    run(main())


def test_queue_full_is_503_with_retry_after() -> None:
    async def main() -> None:
        async with running(make_app(queue_limit=2, tile_size=32, tile_overlap=4)) as c:
            r = await c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 100, 100)),
                             headers=PNG)  # 9 tiles of 32 > the queue limit
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert "limit is 2" in _error(r)["error"]

    run(main())


class SlowWhenArmed(Engine):
    """Slower than its warm-up said: admission lets the request in, the deadline passes."""

    armed = False

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        if self.armed:
            time.sleep(0.2)
        return super().run(name, x)


def test_deadline_is_504() -> None:
    settings = Settings(**{**TEST_SETTINGS, "request_timeout_s": 1.0})
    engine = SlowWhenArmed(settings)

    async def main() -> None:
        from app.main import create_app

        async with running(create_app(settings, engine)) as c:
            engine.armed = True
            r = await c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 300, 300)),
                             headers=PNG)
            assert r.status_code == 504 and _error(r)
            engine.armed = False
            r = await c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 8, 8)),
                             headers=PNG)
            assert r.status_code == 200

    run(main())


def test_too_much_work_is_413_before_decoding_with_the_largest_input() -> None:
    async def main() -> None:
        async with running(make_app(request_timeout_s=0.05)) as c:
            r = await c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 600, 600)),
                             headers=PNG)
            assert r.status_code == 413
            body = _error(r)
            assert f"largest input that fits is about {body['largest_side']}x" in \
                body["error"]
            # Machine-readable: the page sends such an image to /v1/jobs on this, not on words.
            assert body["reason"] == "too_slow" and body["largest_side"] < 600
            text = (await c.get("/metrics")).text
            assert ('lsrcnn_rejected_total{model="lsrcnn-lite-x2",reason="too_large",scale="2"}'
                    ' 1.0') in text
            assert 'lsrcnn_tiles_total{' not in text  # no model work at all

    run(main())


def test_client_that_leaves_is_withdrawn() -> None:
    """The ASGI disconnect cancels the request: its waiting tiles never run."""
    app = make_app(tile_size=24, tile_overlap=4)

    async def main() -> None:
        async with running(app):
            body = png_bytes(noise("RGB", 400, 400))
            sent: list[dict] = []
            messages = [{"type": "http.request", "body": body, "more_body": False}]
            left = asyncio.Event()

            async def receive() -> dict:
                if messages:
                    return messages.pop(0)
                # The client hangs up once its first tiles have run: a state, not a guess
                # of how long 324 tiles take on this machine.
                registry = app.state.metrics.registry
                labels = {"model": "lsrcnn-lite-x2", "scale": "2"}
                while (registry.get_sample_value("lsrcnn_tiles_total", labels) or 0) < 10:
                    await asyncio.sleep(0.002)
                left.set()
                return {"type": "http.disconnect"}

            async def send(message: dict) -> None:
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": "/upscale",
                     "query_string": b"scale=2", "headers": [(b"content-type", b"image/png"),
                                                                (b"host", b"test")],
                     "http_version": "1.1", "scheme": "http", "server": ("test", 80),
                     "client": ("127.0.0.1", 1), "root_path": "", "app": app}
            await app(scope, receive, send)
            assert left.is_set()
            assert sent[0]["status"] == 499
            text = generate_latest(app.state.metrics.registry).decode()
            x2 = '{model="lsrcnn-lite-x2",scale="2"}'
            withdrawn = next(line for line in text.splitlines()
                             if line.startswith(f"lsrcnn_withdrawn_tiles_total{x2}"))
            ran = next(line for line in text.splitlines()
                       if line.startswith(f"lsrcnn_tiles_total{x2}"))
            assert float(withdrawn.split()[-1]) > 100  # of 324 tiles, most never ran
            assert float(ran.split()[-1]) < 324 - 100

    run(main())


def test_access_log_is_json_with_request_id(caplog) -> None:  # type: ignore[no-untyped-def]
    from app.logs import JsonFormatter

    async def main() -> None:
        async with running(make_app()) as c:
            await c.get("/health/live", headers={"X-Request-ID": "trace-me"})

    with caplog.at_level("INFO", logger="app.access"):
        run(main())
    record = next(r for r in caplog.records if r.name == "app.access")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] == "trace-me" and entry["status"] == 200


def test_chunked_bodies_over_the_limit_are_413_raw_and_multipart() -> None:
    """No Content-Length to check up front: the limit applies while the body streams in."""
    big = png_bytes(noise("RGB", 400, 400))
    boundary = "lsrcnn-test"
    multipart = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="a.png"\r\nContent-Type: image/png\r\n\r\n').encode() + big + \
        f"\r\n--{boundary}--\r\n".encode()

    def chunks(data: bytes):  # type: ignore[no-untyped-def]
        async def gen():  # type: ignore[no-untyped-def]
            for i in range(0, len(data), 16384):
                yield data[i : i + 16384]
        return gen()

    async def main() -> None:
        async with running(make_app(max_body_bytes=100_000)) as c:
            r = await c.post("/upscale?scale=2", content=chunks(big), headers=PNG)
            assert r.status_code == 413 and _error(r)
            r = await c.post("/upscale?scale=2", content=chunks(multipart),
                             headers={"content-type": f"multipart/form-data; boundary={boundary}"})
            assert r.status_code == 413 and _error(r)
            r = await c.post("/upscale?scale=2", content=png_bytes(noise("RGB", 8, 8)),
                             headers=PNG)
            assert r.status_code == 200

    run(main())


def test_required_gpu_missing_means_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import fake_providers

    fake_providers(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"],
                   ["CPUExecutionProvider"])

    async def main() -> None:
        async with running(make_app(providers="cuda")) as c:
            r = await c.get("/health/ready")
            assert r.status_code == 503 and "CUDA required" in r.json()["reason"]
            r = await c.post("/upscale?scale=2", content=b"x", headers=PNG)
            assert r.status_code == 503

    run(main())


def test_upscale_picks_a_model_by_name_or_by_scale_with_the_same_answer() -> None:
    body = png_bytes(set5_crop("head", (0, 0, 40, 30)))

    async def main() -> None:
        async with running(make_app()) as c:
            by_scale = await c.post("/upscale?scale=3", content=body, headers=PNG)
            by_name = await c.post("/upscale?model=lsrcnn-lite-x3", content=body, headers=PNG)
            both = await c.post("/upscale?model=lsrcnn-lite-x3&scale=3", content=body,
                                headers=PNG)
            assert by_scale.status_code == by_name.status_code == both.status_code == 200
            assert by_name.content == by_scale.content == both.content
            assert Image.open(io.BytesIO(by_name.content)).size == (120, 90)
            r = await c.post("/upscale?model=lsrcnn-lite-x3&scale=2", content=body, headers=PNG)
            assert r.status_code == 422 and "upscales x3, not x2" in _error(r)["error"]
            r = await c.post("/upscale?model=nope", content=body, headers=PNG)
            assert r.status_code == 422 and "no ready model named 'nope'" in _error(r)["error"]
            ready = (await c.get("/health/ready")).json()
            assert ready["models"] == [name for _, name in sorted(
                (int(p.stem[-1]), p.stem) for p in WEIGHTS.glob("*.onnx"))]

    run(main())


def test_readme_documents_every_setting() -> None:
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    missing = [f"LSRCNN_{name.upper()}" for name in Settings.model_fields
               if f"`LSRCNN_{name.upper()}`" not in readme]
    assert not missing, missing


def test_unknown_query_parameters_are_422_naming_them() -> None:
    body = png_bytes(set5_crop())

    async def main() -> None:
        async with running(make_app()) as c:
            for path in ("/upscale", "/v1/jobs"):
                r = await c.post(f"{path}?scale=2&widht=600", content=body, headers=PNG)
                assert r.status_code == 422, (path, r.text)
                error = _error(r)["error"]
                assert "unknown query parameter widht" in error and "width" in error
            r = await c.post("/upscale?scale=2&metadata=strip&kind=clean&quality=80",
                             content=body, headers=PNG)
            assert r.status_code == 200
            text = (await c.get("/metrics")).text
            assert 'lsrcnn_tiles_total{model="lsrcnn-lite-x2",scale="2"}' in text  # one ran

    run(main())
