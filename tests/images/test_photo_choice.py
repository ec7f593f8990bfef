"""The model is chosen per image: a compressed JPEG goes to the photo model, everything else
to the clean one, at /upscale and /v1/jobs alike; `model=` and `kind=` override the choice,
and every answer names its model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.settings import PHOTO_BELOW_QUALITY
from tests.conftest import WEIGHTS
from tests.helpers import make_app, png_bytes, running, set5_crop

CLEAN, PHOTO = "lsrcnn-lite-x2", "lsrcnn-lite-photo-x2"
CROP = set5_crop("butterfly", (40, 40, 120, 110))
JPEG_LOW = png_bytes(CROP, "JPEG", quality=50)
JPEG_HIGH = png_bytes(CROP, "JPEG", quality=95)
PNG = png_bytes(CROP)


@pytest.fixture
def x2_dir(tmp_path: Path) -> Path:
    """The bundled clean and photo x2 models alone: a short warm-up."""
    for name in (CLEAN, PHOTO):
        (tmp_path / f"{name}.onnx").symlink_to(WEIGHTS / f"{name}.onnx")
    return tmp_path


def _decoded(r: httpx.Response) -> np.ndarray:
    import io
    with Image.open(io.BytesIO(r.content)) as img:
        return np.asarray(img.convert("RGB"))


async def _job(c: httpx.AsyncClient, query: str, data: bytes) -> tuple[dict, httpx.Response]:
    r = await c.post(f"/v1/jobs?{query}", content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 60
    while job["status"] not in ("done", "failed") and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        job = (await c.get(f"/v1/jobs/{job['id']}")).json()
    assert job["status"] == "done", job
    return job, await c.get(job["result_url"])


def test_the_threshold_sits_between_the_tested_qualities() -> None:
    assert 50 < PHOTO_BELOW_QUALITY <= 95


def test_auto_choice_per_image_and_overrides(x2_dir: Path) -> None:
    async def main() -> None:
        async with running(make_app(model_dir=x2_dir)) as c:
            models = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}
            assert models[CLEAN]["kind"] == "clean" and models[PHOTO]["kind"] == "photo"
            assert models[CLEAN]["default_for_scale"] and not models[PHOTO]["default_for_scale"]
            assert models[PHOTO]["card"]["recipe"].endswith("lsrcnn-lite-photo-x2.toml")

            async def post(data: bytes, query: str = "scale=2") -> httpx.Response:
                r = await c.post(f"/upscale?{query}", content=data,
                                 headers={"content-type": "image/jpeg"})
                assert r.status_code == 200, r.text
                return r

            low, high, png = await post(JPEG_LOW), await post(JPEG_HIGH), await post(PNG)
            assert low.headers["x-model"] == PHOTO
            assert high.headers["x-model"] == CLEAN and png.headers["x-model"] == CLEAN
            # model= and kind= force a choice.
            forced = await post(JPEG_LOW, f"model={CLEAN}")
            assert forced.headers["x-model"] == CLEAN
            assert (await post(JPEG_LOW, "kind=clean")).headers["x-model"] == CLEAN
            assert (await post(PNG, "kind=photo")).headers["x-model"] == PHOTO
            assert (await post(PNG, f"model={PHOTO}")).headers["x-model"] == PHOTO
            # The two models really differ on the same file.
            assert np.abs(_decoded(low).astype(int) - _decoded(forced)).max() > 0
            for query, why in ((f"model={CLEAN}&kind=photo", "not photo"),
                               ("scale=3&kind=photo", "scale must be"),
                               ("kind=sharp", "kind")):
                r = await c.post(f"/upscale?{query}", content=JPEG_LOW,
                                 headers={"content-type": "image/jpeg"})
                assert r.status_code == 422 and why in r.text, (query, r.text)

            # Jobs choose the same way, and give the same pixels as /upscale.
            job, result = await _job(c, "scale=2", JPEG_LOW)
            assert job["model"] == PHOTO
            np.testing.assert_array_equal(_decoded(result), _decoded(low))
            job, _ = await _job(c, "scale=2", PNG)
            assert job["model"] == CLEAN
            job, result = await _job(c, f"model={CLEAN}", JPEG_LOW)
            assert job["model"] == CLEAN
            np.testing.assert_array_equal(_decoded(result), _decoded(forced))
            r = await c.post(f"/v1/jobs?model={PHOTO}&scale=3", content=PNG,
                             headers={"content-type": "image/png"})
            assert r.status_code == 422, r.text

    asyncio.run(main())


def test_threshold_setting_turns_the_choice(x2_dir: Path) -> None:
    async def main() -> None:
        for threshold, want in ((0, CLEAN), (101, PHOTO)):
            async with running(make_app(model_dir=x2_dir, photo_below_quality=threshold)) as c:
                r = await c.post("/upscale", content=JPEG_HIGH,
                                 headers={"content-type": "image/jpeg"})
                assert r.headers["x-model"] == want, threshold
                r = await c.post("/upscale", content=PNG, headers={"content-type": "image/png"})
                assert r.headers["x-model"] == CLEAN  # not a JPEG: never the photo model

    asyncio.run(main())


def test_a_scale_without_a_photo_model_serves_every_image_clean(tmp_path: Path) -> None:
    (tmp_path / "x3.onnx").symlink_to(WEIGHTS / "lsrcnn-lite-x3.onnx")

    async def main() -> None:
        async with running(make_app(model_dir=tmp_path, default_scale=3)) as c:
            r = await c.post("/upscale", content=JPEG_LOW, headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and r.headers["x-model"] == "lsrcnn-lite-x3"

    asyncio.run(main())


def test_photo_strength_follows_the_jpeg_quality(tmp_path: Path) -> None:
    """With the mild, medium and strong photo models beside the general one, a JPEG below
    LSRCNN_PHOTO_STRONG_BELOW gets the strong one, from LSRCNN_PHOTO_MILD_FROM the mild
    one, the qualities between them the medium one; kind=photo without a JPEG quality
    (a PNG) gets the general one; a scale without strengths is unchanged."""
    names = (CLEAN, PHOTO, "lsrcnn-lite-photo-mild-x2", "lsrcnn-lite-photo-medium-x2",
             "lsrcnn-lite-photo-strong-x2")
    for name in names:
        (tmp_path / f"{name}.onnx").symlink_to(WEIGHTS / f"{name}.onnx")

    async def main() -> None:
        async with running(make_app(model_dir=tmp_path)) as c:
            models = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}
            assert models["lsrcnn-lite-photo-strong-x2"]["strength"] == "strong"
            assert models[PHOTO]["strength"] == "" and models[CLEAN]["strength"] == ""
            assert models["lsrcnn-lite-photo-medium-x2"]["strength"] == "medium"
            medium = "lsrcnn-lite-photo-medium-x2"
            for quality, want in ((30, "lsrcnn-lite-photo-strong-x2"),
                                  (55, "lsrcnn-lite-photo-strong-x2"), (60, medium),
                                  (75, medium), (80, medium),
                                  (85, "lsrcnn-lite-photo-mild-x2"),
                                  (90, "lsrcnn-lite-photo-mild-x2"), (95, CLEAN)):
                r = await c.post("/upscale?scale=2", content=png_bytes(CROP, "JPEG",
                                                                      quality=quality),
                                 headers={"content-type": "image/jpeg"})
                assert r.headers["x-model"] == want, (quality, r.headers["x-model"])
            r = await c.post("/upscale?kind=photo", content=PNG,
                             headers={"content-type": "image/png"})
            assert r.headers["x-model"] == PHOTO
            job, _ = await _job(c, "scale=2", JPEG_LOW)
            assert job["model"] == "lsrcnn-lite-photo-strong-x2"

    asyncio.run(main())
