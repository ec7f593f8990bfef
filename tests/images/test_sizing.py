"""Any output size: the model scale and final size a request gets, the resize, and the
HTTP doors (/upscale and /v1/jobs), with the refusals before any model work."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.http import naming
from app.images.sizing import Size, SizeError, model_scale, resize
from tests.conftest import WEIGHTS
from tests.helpers import make_app, png_bytes, running, set5_crop

SCALES = [2, 3, 4]
PNG = {"content-type": "image/png"}


@pytest.mark.parametrize(("size", "w", "h", "want"), [
    (Size(2), 100, 80, (2, None)),
    (Size(3.0), 100, 80, (3, None)),
    (Size(1.5), 100, 80, (2, (150, 120))),
    (Size(2.5), 101, 80, (3, (252, 200))),
    (Size(width=600), 300, 200, (2, None)),  # exactly x2: nothing to resize
    (Size(width=500), 300, 200, (2, (500, 333))),  # height keeps the aspect ratio
    (Size(height=700), 300, 200, (4, (1050, 700))),
    (Size(width=640, height=480), 300, 300, (3, (640, 480))),  # both: exactly that size
    (Size(width=300, height=450), 300, 200, (3, (300, 450))),  # one side as it is
])
def test_model_scale_and_final_size(size: Size, w: int, h: int, want: tuple) -> None:
    assert size.resolve(w, h, SCALES) == want


@pytest.mark.parametrize(("size", "why"), [
    (Size(width=200), "smaller than the image"),
    (Size(width=400, height=100), "smaller than the image"),
    (Size(width=300), "does not enlarge"),
    (Size(4.5), "scale must be at most 4"),
    (Size(height=1000), "scale must be at most 4"),
])
def test_sizes_that_cannot_be_made(size: Size, why: str) -> None:
    with pytest.raises(SizeError, match=why):
        size.resolve(300, 200, SCALES)


def test_a_scale_with_a_width_is_refused() -> None:
    with pytest.raises(SizeError, match="not both"):
        Size(2, width=100)


def test_the_next_served_scale_serves_a_missing_one() -> None:
    assert model_scale(3, [2, 4]) == 4  # x4, then down
    assert model_scale(1.01, [3]) == 3


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "I;16"])
def test_resize_keeps_mode_and_premultiplies_alpha(mode: str) -> None:
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
    img.paste((0, 255, 0, 0), (20, 0, 40, 40))  # fully transparent green on the right
    img = img.convert(mode) if mode != "I;16" else Image.new("I;16", (40, 40), 40000)
    out = resize(img, (30, 30))
    assert out.mode == mode and out.size == (30, 30)
    if mode == "RGBA":
        # No green bleeds into the opaque red half: colour was weighted by alpha.
        assert np.asarray(out)[:, :12, 1].max() == 0
    if mode == "I;16":
        assert np.asarray(out).min() >= 39990


def test_download_names() -> None:
    assert naming.download_name("C:\\photos\\butterfly.png", "x", "_x2", "png") == \
        "butterfly_x2.png"
    assert naming.download_name("../a/b/été.JPG", "x", "_1920x1440", "jpeg") == \
        "été_1920x1440.jpg"
    assert naming.download_name(None, "upscaled", "_x3", "webp") == "upscaled_x3.webp"
    assert naming.download_name('x";\r\n.png', "f", "_x2", "png") == "x__x2.png"
    assert naming.disposition("été_x2.png") == \
        "inline; filename=\"_t__x2.png\"; filename*=UTF-8''%C3%A9t%C3%A9_x2.png"


def _size(r) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return Image.open(io.BytesIO(r.content)).size


def test_upscale_and_jobs_make_any_size_and_refuse_what_they_cannot() -> None:
    img = set5_crop("butterfly", (0, 0, 60, 40))
    body = png_bytes(img)

    async def main() -> None:
        async with running(make_app()) as c:
            for query, size in (("scale=1.5", (90, 60)), ("width=100", (100, 67)),
                                ("height=150", (225, 150)), ("width=70&height=90", (70, 90)),
                                ("scale=2", (120, 80))):
                r = await c.post(f"/upscale?{query}&kind=clean", content=body, headers=PNG)
                assert r.status_code == 200 and _size(r) == size, (query, r.text)
            # A fractional scale is the next integer scale's model output, resized down.
            r15 = await c.post("/upscale?scale=1.5&kind=clean", content=body, headers=PNG)
            r2 = await c.post("/upscale?scale=2&kind=clean", content=body, headers=PNG)
            assert r15.headers["x-model"] == r2.headers["x-model"] == "lsrcnn-lite-x2"
            down = np.asarray(Image.open(io.BytesIO(r2.content)).resize((90, 60),
                                                                        Image.LANCZOS))
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(r15.content))), down)
            assert 'filename="upscaled_90x60.png"' in r15.headers["content-disposition"]
            for query, why in (("width=50", "smaller than the image"),
                               ("scale=2&width=200", "not both"),
                               ("scale=0.5", "greater than 1"),
                               ("width=0", "greater than or equal to 1"),
                               ("model=lsrcnn-lite-x2&scale=2.5", "less than the x2.5")):
                for path in ("/upscale", "/v1/jobs"):
                    r = await c.post(f"{path}?{query}", content=body, headers=PNG)
                    assert r.status_code == 422 and why in r.text, (path, query, r.text)
            # The job: multipart names the file; the result keeps the name and the size.
            r = await c.post("/v1/jobs?width=100&kind=clean",
                             files={"file": ("butterfly.png", body, "image/png")})
            assert r.status_code == 202, r.text
            url = r.headers["location"]
            for _ in range(200):
                view = (await c.get(url)).json()
                if view["status"] == "done":
                    break
                await asyncio.sleep(0.05)
            assert view["size"] == [100, 67] and view["filename"] == "butterfly.png"
            res = await c.get(f"{url}/result")
            assert _size(res) == (100, 67)
            assert 'filename="butterfly_100x67.png"' in res.headers["content-disposition"]
            r = await c.post("/upscale?scale=2&filename=bird.png", content=body, headers=PNG)
            assert 'filename="bird_x2.png"' in r.headers["content-disposition"]

    asyncio.run(main())


def test_a_whole_scale_without_its_own_model_is_made_by_the_next_one(tmp_path: Path) -> None:
    for name in ("lsrcnn-lite-x2", "lsrcnn-lite-x4"):
        (tmp_path / f"{name}.onnx").symlink_to(WEIGHTS / f"{name}.onnx")
    body = png_bytes(set5_crop("bird", (0, 0, 40, 30)))

    async def main() -> None:
        async with running(make_app(model_dir=tmp_path)) as c:
            r = await c.post("/upscale?scale=3", content=body, headers=PNG)
            assert r.status_code == 200, r.text
            assert r.headers["x-model"] == "lsrcnn-lite-x4" and _size(r) == (120, 90)
            r = await c.post("/upscale?scale=4", content=body, headers=PNG)
            assert r.headers["x-model"] == "lsrcnn-lite-x4" and _size(r) == (160, 120)

    asyncio.run(main())
