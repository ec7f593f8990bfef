"""The one path an image takes, whichever door it came in by: probe -> resolve -> plan ->
admit -> decode -> run -> encode (a streamed answer) or write (a job's result file).

`/upscale` runs it all at once. A job runs the first half at submission (probe, resolve,
plan, and a decode that proves the file whole) and stores its model and plan; when it runs,
it admits that plan at background priority, decodes its spooled input and writes. Tensors
of the model contract (v2 infer) take plan -> admit -> run without the image steps. The
cost is known from the header before anything is decoded, and EXIF orientation is read from
the header too, so the plan admitted is the plan run. Knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO

import numpy as np
from PIL import Image

from app.images import imaging, metadata, sizing
from app.images.canvas import Canvas, ChunkStream, StreamClosed
from app.images.metadata import Metadata
from app.images.sizing import Size, SizeError
from app.runtime import tiling
from app.runtime.engine import Engine
from app.runtime.upscaler import AUTO, Upscaler, _malloc_trim, log
from app.runtime.work import BACKGROUND, SYNC, TileWork, TooLarge
from app.settings import Settings
from model import contract

# Outputs above this many bytes hand their freed memory back to the system at once; the
# rest waits until the service is idle.
TRIM_BYTES = 64 * 1024 * 1024
Writer = Callable[[IO[bytes]], None]  # writes an encoded result into an open file


@dataclass
class Planned:
    """An image whose cost is known and whose model is chosen; nothing decoded yet."""

    probed: imaging.Probe
    name: str  # the model
    scale: int
    plan: tiling.TilePlan
    out_fmt: str
    quality: int
    strip: bool = False  # metadata=strip: EXIF and XMP are not carried
    target: tuple[int, int] | None = None  # (w, h) the model's output is resized to


@dataclass
class Result:
    chunks: AsyncIterator[bytes]  # the encoded image, streamed as it is made
    media_type: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    tiles: int = 0
    overhead: float = 1.0  # model pixels / image pixels
    model: str = ""  # the model that made it
    scale: int = 0  # the model's
    target: tuple[int, int] | None = None  # the size it was resized to
    fmt: str = "png"


class Pipeline:
    def __init__(self, up: Upscaler) -> None:
        self.up = up
        self._encoding: set[asyncio.Task] = set()

    # -- the steps -----------------------------------------------------------------------

    def plan(self, data: bytes, size: Size, model: str | None, kind: str,
             fmt: str | None, quality: int, limits: tuple[int, int] | None = None,
             strip: bool = False) -> Planned:
        """Probe (every limit the header decides), resolve the model's scale (from the
        image's size when a width or height is asked for) and the model (the file's own JPEG
        tables decide with kind auto), plan the tiles of the oriented image and check their
        count: 400, 413, 415 and 422 before any pixel is decoded. The output limit counts
        the model's output, which a target size is resized down from."""
        up, s = self.up, self.up.settings
        max_in, max_out = limits or (s.max_input_pixels, s.max_output_pixels)
        target = None
        default = size.scale is None and not size.by_image
        # A whole scale with no model of its own (x3 where only x2 and x4 serve) is made
        # like a fractional one: the next scale's model, then resized.
        served = size.integer is not None and (model is not None or size.integer in up.scales)
        if default or served:
            scale = up.engine.models[up.resolve(size.integer, model, kind)].scale
            probed = imaging.probe(data, max_in, max_out, scale, fmt)
        else:
            probed = imaging.probe(data, max_in, max_out, 1, fmt)
            h, w = probed.oriented_size
            scales = [up.engine.models[model].scale] if model in up.engine.models \
                else up.scales
            try:
                scale, target = size.resolve(w, h, scales)
            except SizeError as err:
                raise imaging.ImageError(422, str(err)) from None
            imaging.check(probed.image, max_in, max_out, scale, fmt)
        name = up.resolve(scale, model, kind, probed.jpeg_quality)
        plan = up.plan(name, *probed.oriented_size)
        up.schedulers[name].check_tiles(plan)
        return Planned(probed, name, scale, plan, imaging.output_format(fmt, probed.format),
                       quality, strip, target)

    def admit(self, planned: Planned, deadline: float, tag: str, priority: int = SYNC
              ) -> TileWork:
        return self.up.admit(planned.name, planned.plan, deadline, tag, priority)

    async def decode_image(self, planned: Planned, work: TileWork | None = None
                           ) -> Image.Image:
        """Decode and orient. An orientation the header did not tell (a PNG's EXIF after
        its pixels) turns the image: its plan becomes the transposed one, the same tiles at
        the same cost, so what was admitted still holds."""
        image = (await asyncio.to_thread(imaging.load, planned.probed)).image
        plan = planned.plan
        if (image.height, image.width) != (plan.height, plan.width):
            if (image.width, image.height) != (plan.height, plan.width):
                raise imaging.ImageError(400, "corrupt image: its size changed on decoding")
            plan = planned.plan = tiling.transposed(plan)
            if work is not None:
                work.plan = plan
        return image

    async def decode(self, planned: Planned, work: TileWork | None = None
                     ) -> tuple[Canvas, Metadata]:
        """Decode into the canvas the tiles run into; the metadata the output carries."""
        image = await self.decode_image(planned, work)
        meta = metadata.read(planned.probed.image)  # loaded: a PNG's late EXIF is in
        return Canvas(image, planned.plan, planned.scale), (
            meta.stripped() if planned.strip else meta)

    async def run(self, planned: Planned, work: TileWork, canvas: Canvas) -> None:
        """The tiles, then the resize to a target size (in a thread: Lanczos on a big
        output takes a while)."""
        sched = self.up.schedulers[planned.name]
        try:
            await sched.run(work, canvas.tile, canvas.paste)
        finally:
            sched.release(work)
        if planned.target is not None:
            canvas.out = await asyncio.to_thread(sizing.resize, canvas.out, planned.target)

    # -- the doors -----------------------------------------------------------------------

    async def respond(self, data: bytes, size: Size, fmt: str | None, quality: int,
                      deadline: float, request_id: str = "", *, model: str | None = None,
                      kind: str = AUTO, strip: bool = False) -> Result:
        """`/upscale`: the whole path, the answer streamed as it is encoded."""
        t0 = time.perf_counter()
        planned = self.plan(data, size, model, kind, fmt, quality, strip=strip)
        del data  # the probe's file holds the bytes until they are decoded
        work = self.admit(planned, deadline, request_id)
        try:
            canvas, meta = await self.decode(planned, work)
        except BaseException:
            self.up.schedulers[planned.name].release(work)
            raise
        plan = planned.plan
        planned.probed = None  # type: ignore[assignment]  # the canvas has the pixels
        t1, loop_t1 = time.perf_counter(), asyncio.get_running_loop().time()
        await self.run(planned, work, canvas)
        t2 = time.perf_counter()
        stream = ChunkStream(asyncio.get_running_loop())
        encoding = asyncio.create_task(asyncio.to_thread(
            self._encode, canvas, stream, planned.out_fmt, quality, meta))
        self._encoding.add(encoding)
        encoding.add_done_callback(self._encoding.discard)
        del canvas  # the encoding thread holds it until done
        chunks = stream.chunks()
        first = await anext(chunks, b"")  # an error before any byte is still an answer
        queued = work.started_at - loop_t1 if work.started_at is not None else 0.0
        timings = {"decode": t1 - t0, "queue": max(0.0, queued), "inference": work.model_s,
                   "tiles": t2 - t1, "first-byte": time.perf_counter() - t2}
        self.up.record_pixels(self.up.labels(planned.name), plan, planned.scale,
                              timings["queue"])
        return Result(_prepend(first, chunks), imaging.MEDIA_TYPES[planned.out_fmt], timings,
                      plan.count, plan.overhead, planned.name, planned.scale, planned.target,
                      planned.out_fmt)

    async def to_file(self, planned: Planned, tag: str, write_result: Callable[
            [Writer], Awaitable[int]], on_admit: Callable[[TileWork], None]) -> int:
        """A job: its stored plan admitted at background priority (no deadline), decoded,
        run, and written by `write_result` (the job's owner does its file work); the
        result's size. `on_admit` gets the tile work (its done / total are the progress)."""
        work = self.admit(planned, float("inf"), tag, BACKGROUND)
        on_admit(work)
        try:
            canvas, meta = await self.decode(planned, work)
        except BaseException:
            self.up.schedulers[planned.name].release(work)
            raise
        planned.probed = None  # type: ignore[assignment]
        await self.run(planned, work, canvas)
        write = functools.partial(_encode_to, canvas, planned.out_fmt, planned.quality, meta,
                                  self.up.settings.png_compress_level)
        try:
            return await write_result(write)
        finally:
            del write, canvas
            _malloc_trim()  # a big image's freed pages go back to the system

    async def tensor(self, model: str, x: np.ndarray, deadline: float, request_id: str = ""
                     ) -> np.ndarray:
        """v2 infer: the model contract's tensor, [N, 1, H, W] of Y / 255, through the
        scheduler as one unit of work (admitted, run and refused as a whole); [N, 1, sH, sW]
        out.

        An image within the tile bound is one tile of its own size, so the answer is the
        model's own output; above it the service's tiling applies (overlap, pasted cores).
        The N images are planned once; the unit's tiles are theirs, image by image.
        """
        up = self.up
        scale, labels = up.engine.models[model].scale, up.labels(model)
        contract.check_input(x.shape)
        n, _, h, w = x.shape
        limits = up.settings
        if h * w > limits.max_input_pixels or n * h * w * scale**2 > limits.max_output_pixels:
            raise TooLarge(f"{n} images of {h}x{w} at x{scale}: over the limits of "
                           f"{limits.max_input_pixels} input pixels per image and "
                           f"{limits.max_output_pixels} output pixels per request",
                           "too_many_pixels")
        one = up.plan_tensor(h, w)
        plan = tiling.stacked(one, n)
        up.schedulers[model].check_tiles(plan)
        work = up.admit(model, plan, deadline, request_id)
        out = np.empty(contract.output_shape(x.shape, scale), np.float32)
        rows = len(one.rows)  # row r of the stack is row r % rows of image r // rows

        def cut(r: int, c: int) -> np.ndarray:
            return tiling.cut(x[r // rows, 0], one, r % rows, c)

        def paste(r: int, c: int, y: np.ndarray) -> None:
            tiling.paste(out[r // rows, 0], y, one, r % rows, c, scale)

        started = asyncio.get_running_loop().time()
        sched = up.schedulers[model]
        try:
            await sched.run(work, cut, paste)
        finally:
            sched.release(work)
        queued = work.started_at - started if work.started_at is not None else 0.0
        for _ in range(n):
            up.record_pixels(labels, one, scale, max(0.0, queued))
        return out

    def _encode(self, canvas: Canvas, stream: ChunkStream, fmt: str, quality: int,
                meta: Metadata) -> None:
        """In a thread: encode into the stream, then hand freed memory back at once after a
        big answer; smaller ones leave it to the idle-time trim."""
        try:
            canvas.encode(stream, fmt, quality, meta, self.up.settings.png_compress_level)
            stream.finish()
        except StreamClosed:
            log.info("output abandoned: the client left")
        except BaseException as err:
            stream.finish(err)
        out_bytes = canvas.out.width * canvas.out.height * len(canvas.out.getbands())
        del canvas
        if out_bytes > TRIM_BYTES:
            _malloc_trim()
        self.up.freed()


def upscale_direct(engine: Engine, image: Image.Image, model: str, settings: Settings
                   ) -> Image.Image:
    """The service's tiling and colour path on one decoded image, without HTTP or the
    scheduler: one tile a call, in order (benchmarks, the README figures)."""
    plan = tiling.plan_tiles(image.height, image.width, settings.tile_size,
                             settings.tile_overlap)
    canvas = Canvas(image, plan, engine.models[model].scale)
    for r, c in plan.tiles():
        canvas.paste(r, c, engine.run(model, canvas.tile(r, c)[None, None])[0, 0])
    return canvas.out


def _encode_to(canvas: Canvas, fmt: str, quality: int, meta: Metadata, level: int,
               f: IO[bytes]) -> None:
    canvas.encode(f, fmt, quality, meta, level)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk
