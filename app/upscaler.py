"""The upscaling pipeline: header -> plan -> admission -> decode -> fair tiles -> encode.

Owns the engine and one scheduler per model (by name); knows nothing about HTTP. Bare
tensors of the model contract (the Open Inference Protocol) take the same schedulers and
admission, without the colour and encoding steps. The cost of a
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

import numpy as np
from PIL import Image

from app import imaging, tiling
from app.canvas import Canvas, ChunkStream, StreamClosed
from app.engine import Engine, NoDefaultModel
from app.metrics import Metrics
from app.scheduler import BatchRecord, Busy, CostModel, Job, Scheduler, TooLarge
from app.settings import Settings
from model import contract

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
    model: str = ""  # the model that made it


def upscale_direct(engine: Engine, image: Image.Image, model: str, settings: Settings
                   ) -> Image.Image:
    """The service's tiling and colour path on one decoded image, without HTTP or the
    scheduler: one tile a call, in order (benchmarks, the README figure)."""
    plan = tiling.plan_tiles(image.height, image.width, settings.tile_size,
                             settings.tile_overlap)
    canvas = Canvas(image, plan, engine.models[model].scale)
    for r, c in plan.tiles():
        canvas.paste(r, c, engine.run(model, canvas.tile(r, c)[None, None])[0, 0])
    return canvas.out


class UnknownModel(LookupError):
    """No ready model of that name or scale."""


# What a request may ask for by `kind`: a kind of model, or `auto` (chosen per image).
AUTO = "auto"
KINDS = (AUTO, *contract.KINDS)


class Upscaler:
    def __init__(self, settings: Settings, metrics: Metrics, engine: Engine | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine or Engine(settings)
        self.schedulers: dict[str, Scheduler] = {}  # by model name, once warmed
        self._encoding: set[asyncio.Task] = set()
        self._trimmer: asyncio.Task | None = None
        self._dirty = False  # memory freed since the last trim
        self.ready = False
        self.reason = "models loading"

    @property
    def models(self) -> list[str]:
        """Models warmed and scheduled, by scale then name."""
        return [name for name in self.engine.names if name in self.schedulers]

    @property
    def scales(self) -> list[int]:
        return sorted({self.engine.models[name].scale for name in self.schedulers})

    def model_ready(self, name: str) -> bool:
        """Whether a model serves: loaded, warmed and scheduled, whatever became of the
        others (readiness is per model; `ready` is the default scale's)."""
        return name in self.schedulers

    def resolve(self, scale: int | None = None, model: str | None = None, kind: str = AUTO,
                jpeg_quality: int | None = None) -> str:
        """The model a request means: by name, else the one of its kind serving its scale
        (the default scale when it names neither). With `kind` auto, a JPEG whose estimated
        quality is below LSRCNN_PHOTO_BELOW_QUALITY gets the scale's photo model, anything
        else the clean one. UnknownModel when there is none; ValueError when the name, the
        scale or the kind disagree."""
        if model is not None:
            if model not in self.schedulers:
                raise UnknownModel(f"no ready model named {model!r}; ready: {self.models}")
            info = self.engine.models[model]
            if scale is not None and info.scale != scale:
                raise ValueError(f"model {model} upscales x{info.scale}, not x{scale}")
            if kind != AUTO and info.kind != kind:
                raise ValueError(f"model {model} is a {info.kind} model, not {kind}")
            return model
        scale = self.settings.default_scale if scale is None else scale
        name = self.engine.model_for(scale)
        if name is None or name not in self.schedulers:
            raise UnknownModel(f"scale must be one of {self.scales}")
        auto = kind == AUTO
        if auto:
            kind = self.auto_kind(jpeg_quality)
        if kind == contract.CLEAN and self.engine.models[name].kind != contract.CLEAN:
            raise UnknownModel(f"no clean model for x{scale}")
        if kind == contract.PHOTO:
            photo = self.engine.model_for(scale, contract.PHOTO)
            if photo is None or photo not in self.schedulers:
                if auto:  # a scale with no photo model: the clean one serves every image
                    return name
                raise UnknownModel(f"no photo model for x{scale}")
            return photo
        return name

    def auto_kind(self, jpeg_quality: int | None) -> str:
        """The kind of model an image gets when the request leaves the choice to us."""
        if jpeg_quality is not None and jpeg_quality < self.settings.photo_below_quality:
            return contract.PHOTO
        return contract.CLEAN

    def _labels(self, name: str) -> tuple[str, str]:
        """Metric labels of a model: its scale and its name."""
        return str(self.engine.models[name].scale), name

    def bound(self) -> int:
        """Largest tile side: the tile size plus context on both sides, rounded up."""
        s, on_gpu = self.settings, self.engine.on_gpu
        m = s.resolved_multiple(on_gpu)
        return -(-(s.tile_size + 2 * s.tile_overlap) // m) * m

    async def start(self) -> None:
        """Load and warm every model not serving yet, then schedule it. A model that fails
        costs only itself: the others serve, and without the default scale's model the
        service stays not ready (called again, it retries what is missing)."""
        s = self.settings
        missing_default: str | None = None
        try:
            await asyncio.to_thread(self.engine.load)
        except NoDefaultModel as err:
            missing_default = f"model load failed: {err}"
            log.error("%s; serving the other models", missing_default)
        except Exception as err:
            self.reason = f"model load failed: {err}"
            log.exception("model load failed")
            return
        if not self.schedulers:
            self.reason = "models warming up"
        on_gpu = self.engine.on_gpu
        costs: dict[str, CostModel] = {}
        for name in (n for n in self.engine.names if n not in self.schedulers):
            try:
                samples = await asyncio.to_thread(
                    self.engine.warm_up, name, (self.bound(), self.bound()),
                    s.warm_batch_sizes(on_gpu), s.resolved_workers(on_gpu))
                costs[name] = CostModel.fit(samples)
            except Exception as err:
                log.exception("warm-up of %s failed", name)
                self.engine.drop(name, f"warm-up failed: {err}")  # another may serve its scale
        for name, cost in costs.items():
            self.schedulers[name] = self._scheduler(name, cost)
        if self.schedulers and self._trimmer is None:
            self._trimmer = asyncio.create_task(self._trim_when_idle())
        default = self.engine.model_for(s.default_scale)
        if missing_default or default is None or default not in self.schedulers:
            self.reason = missing_default or (f"model load failed: no model for the default "
                                              f"scale x{s.default_scale} warmed up")
            return
        self.ready, self.reason = True, "ready"
        log.info("ready: models %s on %s", self.models, "GPU" if on_gpu else "CPU")

    def _scheduler(self, name: str, cost: CostModel) -> Scheduler:
        s, on_gpu, info = self.settings, self.engine.on_gpu, self.engine.models[name]
        labels = self._labels(name)
        self.metrics.model_info.labels(*labels, info.preset, info.provider, info.arch).set(1)
        sched = Scheduler(
            lambda x, name=name: self.engine.run(name, x), cost,
            workers=s.resolved_workers(on_gpu), max_batch=s.resolved_batch(on_gpu),
            batch_sizes=s.batch_sizes(on_gpu), max_tiles=s.max_tiles_per_request,
            queue_limit=s.queue_limit, timeout_s=s.request_timeout_s,
            headroom=s.admission_headroom, name=name, planner=self._plan,
            on_batch=lambda rec: self._record_batch(labels, rec),
            on_withdraw=lambda job: self._record_withdraw(labels, job))
        self.metrics.watch(labels, sched)
        return sched

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

    def _record_batch(self, labels: tuple[str, str], rec: BatchRecord) -> None:
        m = self.metrics
        m.batch_size.labels(*labels).observe(rec.size)
        m.inference_seconds.labels(*labels).observe(rec.seconds)
        m.tiles.labels(*labels).inc(rec.size)
        if rec.cancelled_s:
            m.withdrawn_model_seconds.labels(*labels).inc(rec.cancelled_s)

    def _record_withdraw(self, labels: tuple[str, str], job: Job) -> None:
        m = self.metrics
        m.withdrawn_requests.labels(*labels).inc()
        m.withdrawn_tiles.labels(*labels).inc(job.waiting)
        m.withdrawn_model_seconds.labels(*labels).inc(job.model_s)

    def _record_pixels(self, labels: tuple[str, str], plan: tiling.TilePlan, scale: int,
                       queued: float) -> None:
        m = self.metrics
        m.queue_seconds.labels(*labels).observe(queued)
        m.tile_overhead.labels(*labels).observe(plan.overhead)
        m.model_pixels.labels(*labels).inc(plan.model_pixels)
        m.input_pixels.labels(*labels).inc(plan.height * plan.width)
        m.output_pixels.labels(*labels).inc(plan.height * plan.width * scale**2)

    def _admit(self, name: str, plan: tiling.TilePlan, deadline: float, tag: str) -> Job:
        try:
            return self.schedulers[name].admit(plan, deadline, tag)
        except (TooLarge, Busy) as err:
            reason = "too_large" if isinstance(err, TooLarge) else "busy"
            self.metrics.rejected.labels(*self._labels(name), reason).inc()
            raise

    def _plan(self, height: int, width: int, min_tiles: int = 1) -> tiling.TilePlan:
        """The service's tile plan for an image: its settings, on this device."""
        s = self.settings
        return tiling.plan_tiles(height, width, s.tile_size, s.tile_overlap, min_tiles,
                                 s.resolved_multiple(self.engine.on_gpu))

    def plan(self, model: str, height: int, width: int) -> tiling.TilePlan:
        """The cheapest grid; spread over the workers nothing is waiting for."""
        return self._plan(height, width, max(1, self.schedulers[model].free_workers()))

    async def canvas_for(self, name: str, probed: imaging.Probe, job: Job) -> Canvas:
        """Decode a probed image into the canvas its job's tiles run into; the plan is made
        again if EXIF orientation turned the image."""
        decoded = await asyncio.to_thread(imaging.load, probed)
        image = decoded.image
        if (image.height, image.width) != (job.plan.height, job.plan.width):
            job.plan = self.plan(name, image.height, image.width)
        return Canvas(image, job.plan, self.engine.models[name].scale)

    async def upscale(self, data: bytes, scale: int | None, fmt: str | None, quality: int,
                      deadline: float, request_id: str = "", *, model: str | None = None,
                      kind: str = AUTO) -> Result:
        """An encoded image upscaled by the model named `model`, else by the one of `kind`
        that serves `scale` (auto: chosen from the image's own JPEG tables)."""
        s = self.settings
        scale = self.engine.models[self.resolve(scale, model, kind)].scale
        t0 = time.perf_counter()
        probed = imaging.probe(data, s.max_input_pixels, s.max_output_pixels, scale, fmt)
        del data  # the probe's file holds the bytes until they are decoded
        name = self.resolve(scale, model, kind, probed.jpeg_quality)
        sched, labels = self.schedulers[name], self._labels(name)
        out_fmt, icc = imaging.output_format(fmt, probed.format), probed.icc_profile
        plan = self.plan(name, *probed.size)
        job = self._admit(name, plan, deadline, request_id)
        try:
            canvas = await self.canvas_for(name, probed, job)
            del probed  # the canvas keeps its own copy of the pixels
            plan = job.plan
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
        self._record_pixels(labels, plan, scale, timings["queue"])
        return Result(_prepend(first, chunks), imaging.MEDIA_TYPES[out_fmt], timings,
                      plan.count, plan.overhead, name)

    async def infer(self, model: str, x: np.ndarray, deadline: float, request_id: str = ""
                    ) -> np.ndarray:
        """The model contract's tensor, [N, 1, H, W] of Y / 255, through the scheduler:
        each image is one admitted job; [N, 1, sH, sW] out.

        An image within the tile bound is one tile of its own size, so the answer is the
        model's own output; above it the service's tiling applies (overlap, pasted cores).
        Images are never spread over idle workers, which would cut them when they fit.
        """
        sched, scale, labels = self.schedulers[model], self.engine.models[model].scale, \
            self._labels(model)
        contract.check_input(x.shape)
        n, _, h, w = x.shape
        limits = self.settings
        if h * w > limits.max_input_pixels or n * h * w * scale**2 > limits.max_output_pixels:
            raise TooLarge(f"{n} images of {h}x{w} at x{scale}: over the limits of "
                           f"{limits.max_input_pixels} input pixels per image and "
                           f"{limits.max_output_pixels} output pixels per request",
                           "too_many_pixels")
        plan = self._plan(h, w)
        jobs: list[Job] = []
        try:
            for k in range(n):
                jobs.append(self._admit(model, plan, deadline, f"{request_id}#{k}"))
        except (TooLarge, Busy):
            for job in jobs:
                sched.release(job)
            raise
        out = np.empty(contract.output_shape(x.shape, scale), np.float32)
        started = asyncio.get_running_loop().time()

        def cut(k: int) -> Callable[[int, int], np.ndarray]:
            return lambda r, c: tiling.cut(x[k, 0], plan, r, c)

        def paste(k: int) -> Callable[[int, int, np.ndarray], None]:
            return lambda r, c, y: tiling.paste(out[k, 0], y, plan, r, c, scale)

        runs = [asyncio.ensure_future(sched.run(job, cut(k), paste(k)))
                for k, job in enumerate(jobs)]
        try:
            await asyncio.gather(*runs)
        finally:  # one failed or we were cancelled: the others' tiles leave the queue too
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            for job in jobs:
                sched.release(job)
        for job in jobs:
            queued = job.started_at - started if job.started_at is not None else 0.0
            self._record_pixels(labels, plan, scale, max(0.0, queued))
        return out

    def _encode(self, canvas: Canvas, stream: ChunkStream, fmt: str, quality: int,
                icc: bytes | None) -> None:
        """In a thread: encode into the stream, then hand freed memory back at once after a
        big answer; smaller ones leave it to the idle-time trim."""
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

