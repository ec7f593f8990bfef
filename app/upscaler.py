"""The upscaling pipeline: header -> plan -> admission -> decode -> fair tiles -> encode.

Owns the engine and one scheduler per scale; knows nothing about HTTP. The cost of a
request is known from the image header before anything is decoded: a request that cannot
finish is refused then (413 alone, 503 with the queue), before any work.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from PIL import Image

from app import imaging, tiling
from app.canvas import Canvas, ChunkStream, StreamClosed
from app.engine import Engine
from app.metrics import Metrics
from app.scheduler import BatchRecord, Busy, CostModel, Job, Scheduler, TooLarge
from app.settings import Settings

log = logging.getLogger("app.upscaler")

# Outputs above this many bytes hand their freed memory back to the system at once; the
# rest waits until the service has been idle this long.
TRIM_BYTES = 64 * 1024 * 1024
IDLE_TRIM_S = 1.0


def _malloc_trim() -> None:
    """glibc keeps freed heap pages of big requests; give them back (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


@dataclass
class Result:
    chunks: AsyncIterator[bytes]  # the encoded image, streamed as it is made
    media_type: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    tiles: int = 0
    overhead: float = 1.0  # model pixels / image pixels


def upscale_direct(engine: Engine, image: Image.Image, scale: int, settings: Settings
                   ) -> Image.Image:
    """The service's tiling and colour path on one decoded image, without HTTP or the
    scheduler: one tile a call, in order (benchmarks, the README figure)."""
    plan = tiling.plan_tiles(image.height, image.width, settings.tile_size,
                             settings.tile_overlap)
    canvas = Canvas(image, plan, scale)
    for r, c in plan.tiles():
        canvas.paste(r, c, engine.run(scale, canvas.tile(r, c)[None, None])[0, 0])
    return canvas.out


class Upscaler:
    def __init__(self, settings: Settings, metrics: Metrics, engine: Engine | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine or Engine(settings)
        self.schedulers: dict[int, Scheduler] = {}
        self._encoding: set[asyncio.Task] = set()
        self._trimmer: asyncio.Task | None = None
        self._dirty = False  # memory freed since the last trim
        self.ready = False
        self.reason = "models loading"

    @property
    def scales(self) -> list[int]:
        return sorted(self.schedulers)

    def bound(self) -> int:
        """Largest tile side: the tile size plus context on both sides, rounded up."""
        s, on_gpu = self.settings, self.engine.on_gpu
        m = s.resolved_multiple(on_gpu)
        return -(-(s.tile_size + 2 * s.tile_overlap) // m) * m

    async def start(self) -> None:
        """Load and warm every model, then start scheduling. Failures leave us not ready."""
        s = self.settings
        costs: dict[int, CostModel] = {}
        try:
            await asyncio.to_thread(self.engine.load)
            self.reason = "models warming up"
            on_gpu = self.engine.on_gpu
            for scale in self.engine.scales:
                samples = await asyncio.to_thread(
                    self.engine.warm_up, scale, (self.bound(), self.bound()),
                    s.batch_sizes(on_gpu), s.resolved_workers(on_gpu))
                costs[scale] = CostModel.fit(samples)
        except Exception as err:
            self.reason = f"model load failed: {err}"
            log.exception("model load failed")
            return
        on_gpu = self.engine.on_gpu
        for scale in self.engine.scales:
            info = self.engine.models[scale]
            label = str(scale)
            self.metrics.model_info.labels(label, info.preset, info.provider).set(1)
            sched = Scheduler(
                lambda x, scale=scale: self.engine.run(scale, x), costs[scale],
                workers=s.resolved_workers(on_gpu), max_batch=s.resolved_batch(on_gpu),
                batch_sizes=s.batch_sizes(on_gpu), max_tiles=s.max_tiles_per_request,
                queue_limit=s.queue_limit, timeout_s=s.request_timeout_s,
                headroom=s.admission_headroom, name=f"x{scale}", planner=self._planner(),
                on_batch=lambda rec, label=label: self._record_batch(label, rec),
                on_withdraw=lambda job, label=label: self._record_withdraw(label, job))
            self.metrics.watch(label, sched)
            self.schedulers[scale] = sched
        self._trimmer = asyncio.create_task(self._trim_when_idle())
        self.ready, self.reason = True, "ready"
        log.info("ready: scales %s", self.scales)

    async def _trim_when_idle(self) -> None:
        """Hand freed memory back once load stops: not after every request (the next one
        would fault its pages in again), but when a second passes with no work."""
        while True:
            await asyncio.sleep(IDLE_TRIM_S)
            if self._dirty and not any(sc.busy for sc in self.schedulers.values()):
                self._dirty = False
                await asyncio.to_thread(_malloc_trim)

    async def stop(self) -> None:
        if self._trimmer is not None:
            self._trimmer.cancel()
        self.ready, self.reason = False, "shutting down"
        for sched in self.schedulers.values():
            await sched.stop()

    def _record_batch(self, label: str, rec: BatchRecord) -> None:
        m = self.metrics
        m.batch_size.labels(label).observe(rec.size)
        m.inference_seconds.labels(label).observe(rec.seconds)
        m.tiles.labels(label).inc(rec.size)
        if rec.cancelled_s:
            m.withdrawn_model_seconds.labels(label).inc(rec.cancelled_s)

    def _record_withdraw(self, label: str, job: Job) -> None:
        m = self.metrics
        m.withdrawn_requests.labels(label).inc()
        m.withdrawn_tiles.labels(label).inc(job.waiting)
        m.withdrawn_model_seconds.labels(label).inc(job.model_s)

    def _planner(self) -> Callable[[int, int], tiling.TilePlan]:
        s, m = self.settings, self.settings.resolved_multiple(self.engine.on_gpu)
        return lambda h, w: tiling.plan_tiles(h, w, s.tile_size, s.tile_overlap, multiple=m)

    def plan(self, scale: int, height: int, width: int) -> tiling.TilePlan:
        """The cheapest grid; spread over the workers nothing is waiting for."""
        s, on_gpu = self.settings, self.engine.on_gpu
        return tiling.plan_tiles(height, width, s.tile_size, s.tile_overlap,
                                 min_tiles=max(1, self.schedulers[scale].free_workers()),
                                 multiple=s.resolved_multiple(on_gpu))

    async def upscale(self, data: bytes, scale: int, fmt: str | None, quality: int,
                      deadline: float, request_id: str = "") -> Result:
        s, sched, label = self.settings, self.schedulers[scale], str(scale)
        t0 = time.perf_counter()
        probed = imaging.probe(data, s.max_input_pixels, s.max_output_pixels, scale, fmt)
        out_fmt, icc = imaging.output_format(fmt, probed.format), probed.icc_profile
        plan = self.plan(scale, *probed.size)
        try:
            job = sched.admit(plan, deadline, request_id)
        except (TooLarge, Busy) as err:
            reason = "too_large" if isinstance(err, TooLarge) else "busy"
            self.metrics.rejected.labels(label, reason).inc()
            raise
        try:
            decoded = await asyncio.to_thread(imaging.load, probed)
            del probed  # the canvas keeps its own copy of the pixels
            image = decoded.image
            if (image.height, image.width) != (plan.height, plan.width):  # EXIF rotation
                plan = self.plan(scale, image.height, image.width)
                job.plan = plan
            canvas = Canvas(image, plan, scale)
            del image, decoded
            t1, loop_t1 = time.perf_counter(), asyncio.get_running_loop().time()
            await sched.run(job, canvas.tile, canvas.paste)
        finally:
            sched.release(job)
        t2 = time.perf_counter()
        stream = ChunkStream(asyncio.get_running_loop())
        encoding = asyncio.create_task(asyncio.to_thread(
            self._encode, canvas, stream, out_fmt, quality, icc))
        self._encoding.add(encoding)
        encoding.add_done_callback(self._encoding.discard)
        del canvas  # the encoding thread holds it until done
        chunks = stream.chunks()
        first = await anext(chunks, b"")  # an error before any byte is still an answer
        queued = job.started_at - loop_t1 if job.started_at is not None else 0.0
        timings = {"decode": t1 - t0, "queue": max(0.0, queued), "inference": job.model_s,
                   "tiles": t2 - t1, "first-byte": time.perf_counter() - t2}
        m = self.metrics
        m.queue_seconds.labels(label).observe(timings["queue"])
        m.tile_overhead.labels(label).observe(plan.overhead)
        m.model_pixels.labels(label).inc(plan.model_pixels)
        m.input_pixels.labels(label).inc(plan.height * plan.width)
        m.output_pixels.labels(label).inc(plan.height * plan.width * scale**2)
        return Result(_prepend(first, chunks), imaging.MEDIA_TYPES[out_fmt], timings,
                      plan.count, plan.overhead)

    def _encode(self, canvas: Canvas, stream: ChunkStream, fmt: str, quality: int,
                icc: bytes | None) -> None:
        """In a thread: encode into the stream, then hand freed memory back when it was a
        big answer or the last work."""
        try:
            canvas.encode(stream, fmt, quality, icc, self.settings.png_compress_level)
            stream.finish()
        except StreamClosed:
            log.info("output abandoned: the client left")
        except BaseException as err:
            stream.finish(err)
        out_bytes = canvas.out.width * canvas.out.height * len(canvas.out.getbands())
        del canvas
        if out_bytes > TRIM_BYTES:
            _malloc_trim()
        self._dirty = True


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk

