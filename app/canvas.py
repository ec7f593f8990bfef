"""One request's pixels: the decoded input, its tiles of Y, and the output built in bands.

Memory is bounded by the output: a tile's Y is computed from the input when a worker takes
it, its upscaled core is pasted into the band of output rows it belongs to, and once every
tile of a band is in, that band's colour (bicubic Cb/Cr and alpha, computed from the input
rows around it) is joined and written into the output image. No whole-image float plane
exists at any time, only the bands in progress.

`tile` and `paste` run in the scheduler's worker threads; tiles paste into disjoint rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from PIL import Image

from app import imaging, tiling

# LR rows around a strip that bicubic (support 2) reads, plus one to spare.
MARGIN = 3
# LR rows joined at once: keeps the float temporaries of a wide image to a few MB.
STRIP = 16


class ChunkWriter:
    """A write-only file that keeps what is written as chunks: the encoded output is never
    copied into one more buffer, and chunks are freed as they are sent."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def drain(self) -> Iterator[bytes]:
        while self.chunks:
            yield self.chunks.pop(0)


class Canvas:
    def __init__(self, image: Image.Image, plan: tiling.TilePlan, scale: int) -> None:
        if (image.height, image.width) != (plan.height, plan.width):
            raise ValueError("the plan does not match the image")
        self.mode = image.mode
        self.src = np.asarray(image)  # H x W (x C), uint8, or uint16 for I;16
        self.plan, self.scale = plan, scale
        self.out = Image.new(self.mode, (plan.width * scale, plan.height * scale))
        self._bands: dict[int, np.ndarray] = {}
        self._left = [len(plan.cols)] * len(plan.rows)
        self._lock = threading.Lock()

    def _luma(self, part: np.ndarray) -> np.ndarray:
        """Studio-range Y (0..255 scale) of a region of the input."""
        if self.mode in ("RGB", "RGBA"):
            return imaging.luma(part)
        if self.mode == "I;16":
            return imaging.gray_to_y(part, 65535.0)
        return imaging.gray_to_y(part[..., 0] if self.mode == "LA" else part, 255.0)

    def tile(self, r: int, c: int) -> np.ndarray:
        """The model input of tile (r, c): Y / 255, float32."""
        return self._luma(tiling.cut(self.src, self.plan, r, c)) / np.float32(255.0)

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
        y *= np.float32(255.0)
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

    def encode(self, fmt: str, quality: int, icc: bytes | None, png_level: int) -> ChunkWriter:
        """Encode the finished output; every band must be in."""
        if any(self._left):
            raise RuntimeError("output incomplete")
        self.src = np.empty((0, 0), self.src.dtype)  # every band is joined: the input can go
        writer = ChunkWriter()
        imaging.encode(self.out, fmt, quality, icc, png_level, fp=writer)  # type: ignore[arg-type]
        return writer
