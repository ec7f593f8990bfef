"""The upscaling pipeline: decode -> tiles -> shared batcher -> merge -> encode.

Owns the engine and one batcher per scale; knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from app import imaging, tiling
from app.batcher import Batcher, BatchRecord
from app.engine import Engine
from app.metrics import Metrics
from app.settings import Settings

log = logging.getLogger("app.upscaler")


@dataclass
class Result:
    body: bytes
    media_type: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    tiles: int = 0


@dataclass
class Prepared:
    """An image decoded, split into planes and cut into model-ready tiles."""

    decoded: imaging.Decoded
    planes: imaging.Planes
    plan: tiling.TilePlan
    tiles: np.ndarray  # [N, 1, T, T] of Y / 255


def prepare(data: bytes, scale: int, settings: Settings, fmt: str | None = None) -> Prepared:
    """Decode (with the size and output-format limits), split colour, cut Y into tiles.
    Blocking."""
    s = settings
    decoded = imaging.decode(data, s.max_input_pixels, s.max_output_pixels, scale, fmt)
    planes = imaging.split(decoded.image)
    plan = tiling.plan_tiles(*planes.y.shape, s.tile_size, s.tile_overlap)
    return Prepared(decoded, planes, plan, tiling.cut_tiles(planes.y / 255.0, plan))


def finish(job: Prepared, out_tiles: np.ndarray, scale: int, fmt: str, quality: int,
           settings: Settings) -> bytes:
    """Merge upscaled tiles, rejoin colour and alpha, encode. Blocking."""
    y = tiling.merge_tiles(out_tiles, job.plan, scale) * 255.0
    image = imaging.join(y, job.planes, scale)
    return imaging.encode(image, fmt, quality, job.decoded.icc_profile,
                          settings.png_compress_level)


class Upscaler:
    def __init__(self, settings: Settings, metrics: Metrics, engine: Engine | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine or Engine(settings)
        self.batchers: dict[int, Batcher] = {}
        self.ready = False
        self.reason = "models loading"

    @property
    def scales(self) -> list[int]:
        return sorted(self.batchers)

    async def start(self) -> None:
        """Load and warm every model, then start batching. Failures leave us not ready."""
        s = self.settings
        try:
            await asyncio.to_thread(self.engine.load)
            self.reason = "models warming up"
            await asyncio.to_thread(self.engine.warm_up, s.tile_size, s.max_batch_size)
        except Exception as err:
            self.reason = f"model load failed: {err}"
            log.exception("model load failed")
            return
        for scale in self.engine.scales:
            info = self.engine.models[scale]
            self.metrics.model_info.labels(str(scale), info.preset, info.provider).set(1)
            batcher = Batcher(
                lambda x, scale=scale: self.engine.run(scale, x),
                max_batch=s.max_batch_size, max_wait_s=s.max_wait_ms / 1000.0,
                queue_limit=s.queue_limit, name=f"x{scale}",
                workers=s.resolved_workers(self.engine.on_gpu),
                on_batch=lambda rec, scale=scale: self._record_batch(scale, rec),
                on_depth=lambda d, scale=scale: self.metrics.queue_depth.labels(str(scale)).set(d),
            )
            batcher.start()
            self.batchers[scale] = batcher
        self.ready, self.reason = True, "ready"
        log.info("ready: scales %s", self.scales)

    async def stop(self) -> None:
        self.ready, self.reason = False, "shutting down"
        for batcher in self.batchers.values():
            await batcher.stop()

    def _record_batch(self, scale: int, rec: BatchRecord) -> None:
        label = str(scale)
        self.metrics.batch_size.labels(label).observe(rec.size)
        self.metrics.inference_seconds.labels(label).observe(rec.seconds)
        self.metrics.tiles.labels(label).inc(rec.size)

    async def upscale(self, data: bytes, scale: int, fmt: str | None, quality: int,
                      deadline: float) -> Result:
        batcher = self.batchers[scale]
        t0 = time.perf_counter()
        job = await asyncio.to_thread(prepare, data, scale, self.settings, fmt)
        out_fmt = imaging.output_format(fmt, job.decoded.format)
        t1 = time.perf_counter()
        out_tiles, stats = await batcher.submit(job.tiles, deadline)
        t2 = time.perf_counter()
        body = await asyncio.to_thread(finish, job, out_tiles, scale, out_fmt, quality,
                                       self.settings)
        t3 = time.perf_counter()
        inference = min(stats.inference_s, t2 - t1)
        timings = {"decode": t1 - t0, "queue": (t2 - t1) - inference, "inference": inference,
                   "encode": t3 - t2}
        self.metrics.queue_seconds.labels(str(scale)).observe(timings["queue"])
        plan = job.plan
        self.metrics.output_pixels.labels(str(scale)).inc(plan.height * plan.width * scale**2)
        return Result(body, imaging.MEDIA_TYPES[out_fmt], timings, plan.count)
