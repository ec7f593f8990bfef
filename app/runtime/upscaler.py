"""The model runtime: the engine, one scheduler per model (by name), readiness per model,
and which model a request means (`resolve`). Knows nothing about HTTP or image files: the
path an image takes through it is app/pipeline.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging

from app.runtime import tiling
from app.runtime.engine import Engine, NoDefaultModel
from app.runtime.metrics import Metrics
from app.runtime.scheduler import Scheduler
from app.runtime.work import SYNC, BatchRecord, Busy, CostModel, TileWork, TooLarge
from app.settings import Settings
from model import contract

log = logging.getLogger("app.runtime.upscaler")

# Freed memory waits until the service has been idle this long to go back to the system.
IDLE_TRIM_S = 1.0


def _malloc_trim() -> None:
    """glibc keeps freed heap pages of big requests; give them back (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def photo_strength(settings: Settings, jpeg_quality: int | None) -> str:
    """The photo model's strength a JPEG of this quality gets where its scale has one
    (else the general photo model): strong below LSRCNN_PHOTO_STRONG_BELOW, mild from
    LSRCNN_PHOTO_MILD_FROM, medium between; images with no JPEG quality get the general
    one."""
    if jpeg_quality is None:
        return ""
    if jpeg_quality < settings.photo_strong_below:
        return contract.STRONG
    if jpeg_quality >= settings.photo_mild_from:
        return contract.MILD
    return contract.MEDIUM


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
        quality is below LSRCNN_PHOTO_BELOW_QUALITY gets the scale's photo model (of the
        strength its quality calls for, where the scale has one), anything else the clean
        one. UnknownModel when there is none; ValueError when the name, the
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
            photo = self.engine.model_for(scale, contract.PHOTO,
                                          self.photo_strength(jpeg_quality))
            if photo is None or photo not in self.schedulers:
                if auto:  # a scale with no photo model: the clean one serves every image
                    return name
                raise UnknownModel(f"no photo model for x{scale}")
            return photo
        return name

    def photo_strength(self, jpeg_quality: int | None) -> str:
        return photo_strength(self.settings, jpeg_quality)

    def auto_kind(self, jpeg_quality: int | None) -> str:
        """The kind of model an image gets when the request leaves the choice to us."""
        if jpeg_quality is not None and jpeg_quality < self.settings.photo_below_quality:
            return contract.PHOTO
        return contract.CLEAN

    def labels(self, name: str) -> tuple[str, str]:
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
        # The runtimes that lost at warm-up are gone, and the winners' warm-up buffers are
        # not needed until the first tile: hand their pages back.
        await asyncio.to_thread(self._release)
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
        labels = self.labels(name)
        self.metrics.model_info.labels(*labels, info.preset, info.provider, info.arch,
                                       info.engine, info.precision).set(1)
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
                await asyncio.to_thread(self._release)

    def _release(self) -> None:
        """Runners' buffers between calls (a call that starts meanwhile keeps its own),
        then the heap pages freed."""
        self.engine.release()
        _malloc_trim()

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

    def _record_withdraw(self, labels: tuple[str, str], job: TileWork) -> None:
        m = self.metrics
        m.withdrawn_requests.labels(*labels).inc()
        m.withdrawn_tiles.labels(*labels).inc(job.waiting)
        m.withdrawn_model_seconds.labels(*labels).inc(job.model_s)

    def record_pixels(self, labels: tuple[str, str], plan: tiling.TilePlan, scale: int,
                       queued: float) -> None:
        m = self.metrics
        m.queue_seconds.labels(*labels).observe(queued)
        m.tile_overhead.labels(*labels).observe(plan.overhead)
        m.model_pixels.labels(*labels).inc(plan.model_pixels)
        m.input_pixels.labels(*labels).inc(plan.height * plan.width)
        m.output_pixels.labels(*labels).inc(plan.height * plan.width * scale**2)

    def admit(self, name: str, plan: tiling.TilePlan, deadline: float, tag: str,
              priority: int = SYNC) -> TileWork:
        """The scheduler's admission, with refusals counted by model and reason."""
        try:
            return self.schedulers[name].admit(plan, deadline, tag, priority)
        except (TooLarge, Busy) as err:
            reason = "too_large" if isinstance(err, TooLarge) else "busy"
            self.metrics.rejected.labels(*self.labels(name), reason).inc()
            raise

    def _plan(self, height: int, width: int, min_tiles: int = 1) -> tiling.TilePlan:
        """The service's tile plan for an image: its settings, on this device."""
        s = self.settings
        return tiling.plan_tiles(height, width, s.tile_size, s.tile_overlap, min_tiles,
                                 s.resolved_multiple(self.engine.on_gpu))

    def freed(self) -> None:
        """Memory of a finished image was let go: trim once the service is idle."""
        self._dirty = True

    def plan_tensor(self, height: int, width: int) -> tiling.TilePlan:
        """A tensor's plan: never spread over idle workers (that would cut an image that
        fits in one tile, and its answer would no longer be the model's own output)."""
        return self._plan(height, width)

    def plan(self, model: str, height: int, width: int) -> tiling.TilePlan:
        """The cheapest grid; spread over the workers nothing is waiting for."""
        return self._plan(height, width, max(1, self.schedulers[model].free_workers()))
