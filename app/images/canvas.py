"""One request's pixels: the decoded input, its tiles of Y, and the output built in bands.

Memory is bounded by the output: a tile's Y is computed from the input when a worker takes
it, its upscaled core is pasted into the band of output rows it belongs to, and once every
tile of a band is in, that band's colour (bicubic Cb/Cr and alpha, computed from the input
rows around it) is joined and written into the output image. No whole-image float plane
exists at any time, only the bands in progress.

`tile` and `paste` run in the scheduler's worker threads; tiles paste into disjoint rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import IO

import numpy as np
from PIL import Image

from app.images import imaging
from app.images.metadata import Metadata
from app.runtime import tiling
from model import contract

# LR rows around a strip that bicubic (support 2) reads, plus one to spare.
MARGIN = 3
# LR rows joined at once: keeps the float temporaries of a wide image to a few MB.
STRIP = 16


class StreamClosed(Exception):
    """Nobody reads the encoded output any more (the client left)."""


_END = object()


class ChunkStream:
    """Encoded bytes handed from the encoding thread to the response as they are made.

    At most `depth` chunks wait in between, so the encoded image never sits whole in
    memory, and the first bytes leave while the rest is still being encoded. `write`,
    `tell` and `flush` make it a file for Pillow's encoders (called in the encoding
    thread); `chunks` is read on the event loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = 8) -> None:
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue(depth)
        self._gone = threading.Event()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._put(bytes(data))
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def finish(self, error: BaseException | None = None) -> None:
        """The end of the output, or the error that stopped it (encoding thread)."""
        with contextlib.suppress(StreamClosed):
            self._put(error if error is not None else _END)

    def _put(self, item: object) -> None:
        while not self._gone.is_set():
            put = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
            try:
                put.result(timeout=1.0)
                return
            except concurrent.futures.TimeoutError:
                if not put.cancel():  # it went in just now
                    return
        raise StreamClosed("the reader is gone")

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while (item := await self._queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            self._gone.set()  # a blocked writer gives up


class Canvas:
    def __init__(self, image: Image.Image, plan: tiling.TilePlan, scale: int) -> None:
        if (image.height, image.width) != (plan.height, plan.width):
            raise ValueError("the plan does not match the image")
        self.mode = image.mode
        self.src = np.asarray(image)  # H x W (x C), uint8, or uint16 for I;16
        self.plan, self.scale = plan, scale
        # Not initialised: its pages are touched band by band, not all up front.
        self.out = Image.new(self.mode, (plan.width * scale, plan.height * scale), None)
        self._bands: dict[int, np.ndarray] = {}
        self._left = [len(plan.cols)] * len(plan.rows)
        self._lock = threading.Lock()

    def _luma(self, part: np.ndarray) -> np.ndarray:
        """Studio-range Y (0..255 scale) of a region of the input."""
        if self.mode in ("RGB", "RGBA"):
            return contract.rgb_to_y(part)
        if self.mode == "I;16":
            return imaging.gray_to_y(part, 65535.0)
        return imaging.gray_to_y(part[..., 0] if self.mode == "LA" else part, 255.0)

    def tile(self, r: int, c: int) -> np.ndarray:
        """The model input of tile (r, c): Y / 255, float32."""
        return contract.to_model(self._luma(tiling.cut(self.src, self.plan, r, c)))

    def paste(self, r: int, c: int, y: np.ndarray) -> None:
        """Paste the upscaled tile's core; the last tile of a band finishes that band."""
        rs, s = self.plan.rows[r], self.scale
        with self._lock:
            band = self._bands.get(r)
            if band is None:
                band = np.empty(((rs.core_hi - rs.core_lo) * s, self.plan.width * s),
                                np.float32)
                self._bands[r] = band
        tiling.paste(band, y, self.plan, r, c, s, row_offset=rs.core_lo * s)
        with self._lock:
            self._left[r] -= 1
            complete = self._left[r] == 0
            if complete:
                del self._bands[r]
        if complete:
            self._finish_band(rs.core_lo, rs.core_hi, band)

    def _upscaled(self, plane: np.ndarray, lo: int, hi: int, top: int) -> np.ndarray:
        """Bicubic of a plane cut from input rows [top, ...), cropped to rows [lo, hi)."""
        s = self.scale
        return imaging.resize_plane(plane, s)[(lo - top) * s : (hi - top) * s]

    def _finish_band(self, lo: int, hi: int, y: np.ndarray) -> None:
        """Join colour for the output rows of input rows [lo, hi), a few rows at a time so
        the float temporaries stay small, and write them into the output image."""
        y *= np.float32(contract.Y_PEAK)  # in place: the band is ours now
        s = self.scale
        for a in range(lo, hi, STRIP):
            b = min(hi, a + STRIP)
            rows = self._join(a, b, y[(a - lo) * s : (b - lo) * s])
            self.out.paste(Image.fromarray(rows), (0, a * s))

    def _join(self, lo: int, hi: int, y: np.ndarray) -> np.ndarray:
        """Output pixels of input rows [lo, hi) from their upscaled Y (0..255 scale)."""
        top, bottom = max(0, lo - MARGIN), min(self.plan.height, hi + MARGIN)
        part = self.src[top:bottom]
        mode = self.mode
        if mode == "I;16":
            return np.clip(np.rint(imaging.y_to_gray(y, 65535.0)), 0, 65535).astype(np.uint16)
        if mode in ("L", "LA"):
            pixels = imaging.to_uint8(imaging.y_to_gray(y, 255.0))
        else:
            _, cb, cr = imaging.rgb_to_ycbcr(part[..., :3])
            pixels = imaging.to_uint8(imaging.ycbcr_to_rgb(
                y, self._upscaled(cb, lo, hi, top), self._upscaled(cr, lo, hi, top)))
        if mode in ("RGBA", "LA"):
            alpha = imaging.to_uint8(self._upscaled(part[..., -1].astype(np.float32), lo, hi,
                                                    top))
            pixels = np.concatenate([pixels.reshape(*alpha.shape, -1), alpha[..., None]], -1)
        return pixels

    def encode(self, fp: IO[bytes], fmt: str, quality: int, meta: Metadata | None,
               png_level: int) -> None:
        """Encode the finished output into `fp`; every band must be in."""
        if any(self._left):
            raise RuntimeError("output incomplete")
        self.src = np.empty((0, 0), self.src.dtype)  # every band is joined: the input can go
        imaging.encode(self.out, fmt, quality, meta, png_level, fp=fp)
