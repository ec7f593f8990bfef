"""The banded canvas against the whole-image path: same pixels, every mode, any grid."""

from __future__ import annotations

import asyncio
import io
import random

import numpy as np
import pytest
from PIL import Image

from app.images import imaging
from app.images.canvas import Canvas, ChunkStream, StreamClosed
from app.runtime.tiling import plan_tiles
from tests.helpers import noise


def _model(y01: np.ndarray, scale: int) -> np.ndarray:
    """A pointwise stand-in for the network (tiling cannot change its output)."""
    return (y01 * 0.9 + 0.05).repeat(scale, 0).repeat(scale, 1)


def _whole(img: Image.Image, scale: int) -> np.ndarray:
    planes = imaging.split(img)
    y = _model(planes.y / np.float32(255.0), scale) * np.float32(255.0)
    return np.asarray(imaging.join(y, planes, scale))


def _tiled(img: Image.Image, scale: int, tile: int, min_tiles: int = 1) -> Canvas:
    plan = plan_tiles(img.height, img.width, tile, 3, min_tiles)
    canvas = Canvas(img, plan, scale)
    order = list(plan.tiles())
    random.Random(0).shuffle(order)  # workers finish tiles in any order
    for r, c in order:
        canvas.paste(r, c, _model(canvas.tile(r, c), scale))
    return canvas


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "I;16"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_banded_output_equals_the_whole_image_join(mode: str, scale: int) -> None:
    img = noise(mode, 53, 41, seed=scale)
    canvas = _tiled(img, scale, tile=12)
    assert len(canvas.plan.rows) > 2  # several bands, joined separately
    out = np.asarray(canvas.out).astype(np.int64)
    diff = np.abs(out - _whole(img, scale).astype(np.int64))
    assert canvas.out.mode == img.mode
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float rounding only


def test_tiles_are_y_over_255_of_the_input() -> None:
    img = noise("RGB", 30, 20)
    canvas = Canvas(img, plan_tiles(20, 30, 100, 0), 2)
    np.testing.assert_allclose(canvas.tile(0, 0), imaging.split(img).y / 255.0, atol=1e-6)


def test_encode_streams_chunks_that_decode_to_the_output() -> None:
    img = noise("RGB", 400, 300)
    canvas = _tiled(img, 2, tile=64)

    async def main() -> tuple[bytes, int, int]:
        stream = ChunkStream(asyncio.get_running_loop(), depth=2)

        def encode() -> None:
            canvas.encode(stream, "png", 90, None, 1)
            stream.finish()

        writer = asyncio.create_task(asyncio.to_thread(encode))
        parts = [chunk async for chunk in stream.chunks()]
        await writer
        return b"".join(parts), stream.size, len(parts)

    data, size, parts = asyncio.run(main())
    assert len(data) == size and parts > 2  # several chunks, passed on as made
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))),
                                  np.asarray(canvas.out))


def test_a_reader_that_goes_away_stops_the_encoder() -> None:
    img = noise("RGB", 400, 300)
    canvas = _tiled(img, 2, tile=64)

    async def main() -> None:
        stream = ChunkStream(asyncio.get_running_loop(), depth=1)
        writer = asyncio.create_task(asyncio.to_thread(
            canvas.encode, stream, "png", 90, None, 0))
        chunks = stream.chunks()
        await anext(chunks)
        await chunks.aclose()  # the client left after the first chunk
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(writer, 5)

    asyncio.run(main())


def test_encode_refuses_an_incomplete_output() -> None:
    img = noise("L", 40, 30)
    canvas = Canvas(img, plan_tiles(30, 40, 16, 2), 2)
    canvas.paste(0, 0, _model(canvas.tile(0, 0), 2))
    with pytest.raises(RuntimeError):
        canvas.encode(io.BytesIO(), "png", 90, None, 1)
