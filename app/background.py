"""The jobs API's pipeline: the probe, tile plan, canvas and encoder of `/upscale`, run at
background priority with no deadline, into a file instead of a response.

Kept beside `Upscaler.upscale` rather than inside it: the pixels come out the same (one
plan, one canvas, one encoder), while the request path stays as it is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from typing import IO

from app import imaging
from app.canvas import Canvas
from app.scheduler import BACKGROUND, Job
from app.tiling import TilePlan
from app.upscaler import AUTO, Upscaler, _malloc_trim

Writer = Callable[[IO[bytes]], None]  # writes an encoded result into an open file


# Bytes per output pixel of each decoded mode (16-bit grayscale stays 16-bit in PNG).
BYTES_PER_PIXEL = {"L": 1, "1": 1, "LA": 2, "La": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "I": 2,
                   "RGBA": 4, "PA": 4, "RGBa": 4}
# Encoded size over raw pixels at worst: PNG at level 1 stores what does not deflate (a
# filter byte per row, 5 bytes per 64 KiB block); JPEG and WebP at quality 100 of noisy
# pixels can pass the raw size.
WORST_RATIO = {"png": 1.02, "jpeg": 1.5, "webp": 1.5}
FRAMING = 64 * 1024


def result_bound(probed: imaging.Probe, scale: int, out_fmt: str) -> int:
    """The most bytes a job's result can take, from the header alone: what the spool
    reserves for it at submission, so the cap holds once results are written."""
    img = probed.image
    mode = "RGBA" if imaging.has_alpha(img) and img.mode in ("P", "RGBA", "PA") else img.mode
    per_pixel = BYTES_PER_PIXEL.get(mode, 3)
    h, w = probed.size
    raw = h * w * scale * scale * per_pixel
    return int(raw * WORST_RATIO[out_fmt]) + FRAMING + len(probed.icc_profile or b"")


def job_limits(up: Upscaler) -> tuple[int, int]:
    """Input and output pixel limits of jobs (their own, larger than a request's)."""
    s = up.settings
    return s.job_max_input_pixels, s.job_max_output_pixels or s.max_output_pixels


def check(up: Upscaler, data: bytes, scale: int, fmt: str | None, model: str | None = None,
          kind: str = AUTO) -> tuple[imaging.Probe, TilePlan, str]:
    """Everything the header decides (400, 413, 415, 422), before the job is accepted; the
    model is chosen here, as /upscale chooses it (by name, else by kind and the image)."""
    probed = imaging.probe(data, *job_limits(up), scale, fmt)
    name = up.resolve(scale, model, kind, probed.jpeg_quality)
    plan = up.plan(name, *probed.size)
    up.schedulers[name].check_tiles(plan)
    return probed, plan, name


async def upscale_to_file(up: Upscaler, write_result: Callable[[Writer], Awaitable[int]],
                          job_id: str, data: bytes, scale: int, fmt: str | None, quality: int,
                          model: str | None, on_admit: Callable[[Job], None]) -> int:
    """Upscale a spooled input into the job's result file with the model chosen at
    submission; its size in bytes. `write_result(writer)` writes the file (the job's owner
    does its file work); `on_admit` gets the scheduler's job (its `done` / `total` are the
    progress)."""
    probed, plan, name = check(up, data, scale, fmt, model)
    sched = up.schedulers[name]
    del data
    out_fmt, icc = imaging.output_format(fmt, probed.format), probed.icc_profile
    job = sched.admit(plan, math.inf, job_id, priority=BACKGROUND)
    on_admit(job)
    try:
        canvas = await up.canvas_for(name, probed, job)
        del probed  # the canvas keeps its own copy of the pixels
        await sched.run(job, canvas.tile, canvas.paste)
    finally:
        sched.release(job)
    write = functools.partial(_encode, canvas, out_fmt, quality, icc,
                              up.settings.png_compress_level)
    del canvas
    try:
        return await write_result(write)
    finally:
        del write
        _malloc_trim()  # a big image's freed pages go back to the system


def _encode(canvas: Canvas, fmt: str, quality: int, icc: bytes | None, level: int,
            f: IO[bytes]) -> None:
    canvas.encode(f, fmt, quality, icc, level)
