"""The jobs API's pipeline: the probe, tile plan, canvas and encoder of `/upscale`, run at
background priority with no deadline, into a file instead of a response.

Kept beside `Upscaler.upscale` rather than inside it: the pixels come out the same (one
plan, one canvas, one encoder), while the request path stays as it is.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from typing import IO

from app import imaging
from app.canvas import Canvas
from app.scheduler import BACKGROUND, Job
from app.spool import Spool
from app.tiling import TilePlan
from app.upscaler import AUTO, Upscaler, _malloc_trim


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


async def upscale_to_file(up: Upscaler, spool: Spool, job_id: str, data: bytes, scale: int,
                          fmt: str | None, quality: int, model: str | None,
                          on_admit: Callable[[Job], None]) -> int:
    """Upscale a spooled input into the job's result file with the model chosen at
    submission; its size in bytes. `on_admit` gets the scheduler's job (its `done` /
    `total` are the progress)."""
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
        return await asyncio.to_thread(spool.write_result, job_id, write)
    finally:
        del write
        _malloc_trim()  # a big image's freed pages go back to the system


def _encode(canvas: Canvas, fmt: str, quality: int, icc: bytes | None, level: int,
            f: IO[bytes]) -> None:
    canvas.encode(f, fmt, quality, icc, level)
