"""Prometheus metrics of the service, one registry per app (so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

if TYPE_CHECKING:
    from app.runtime.scheduler import Scheduler

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
OVERHEAD_BUCKETS = (1.0, 1.02, 1.05, 1.1, 1.15, 1.25, 1.5, 2.0, 3.0)
# Per-model series: the scale (what dashboards and autoscaling already group by) and the
# model's name (two models may serve one scale).
MODEL = ["scale", "model"]


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lsrcnn_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("lsrcnn_request_seconds", "HTTP request latency",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("lsrcnn_queue_seconds",
                                       "Time from a request's admission to its first tile "
                                       "starting", MODEL, buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("lsrcnn_inference_seconds",
                                           "Worker time of one batch: cut, model call, paste",
                                           MODEL, buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("lsrcnn_batch_size", "Tiles per model call", MODEL,
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("lsrcnn_queue_depth", "Tiles of admitted requests not started",
                                 MODEL, registry=r)
        self.queue_work = Gauge("lsrcnn_queue_work_seconds",
                                "Estimated seconds until the admitted work is done, all "
                                "workers busy (what admission and autoscaling read)",
                                MODEL, registry=r)
        self.pixel_cost = Gauge("lsrcnn_model_seconds_per_pixel",
                                "Worker seconds per model input pixel, as now estimated",
                                MODEL, registry=r)
        self.cost_factor = Gauge("lsrcnn_cost_factor",
                                 "Recent batches' time over the warm-up cost model's "
                                 "prediction (1 = as measured at start)", MODEL, registry=r)
        self.tiles = Counter("lsrcnn_tiles_total", "Tiles run through the model", MODEL,
                             registry=r)
        self.tile_overhead = Histogram("lsrcnn_tile_overhead",
                                       "Model pixels per image pixel of a request",
                                       MODEL, buckets=OVERHEAD_BUCKETS, registry=r)
        self.model_pixels = Counter("lsrcnn_model_pixels_total", "Pixels fed to the model",
                                    MODEL, registry=r)
        self.input_pixels = Counter("lsrcnn_input_pixels_total",
                                    "Pixels of upscaled input images", MODEL, registry=r)
        self.output_pixels = Counter("lsrcnn_output_pixels_total", "Pixels of upscaled output",
                                     MODEL, registry=r)
        self.rejected = Counter("lsrcnn_rejected_total", "Requests refused at admission: "
                                "too_large (413) or busy (503)", [*MODEL, "reason"], registry=r)
        self.withdrawn_requests = Counter("lsrcnn_withdrawn_requests_total",
                                          "Requests withdrawn before done (client gone or "
                                          "deadline)", MODEL, registry=r)
        self.withdrawn_tiles = Counter("lsrcnn_withdrawn_tiles_total",
                                       "Tiles never run because their request was withdrawn",
                                       MODEL, registry=r)
        self.withdrawn_model_seconds = Counter("lsrcnn_withdrawn_model_seconds_total",
                                               "Worker seconds spent on withdrawn requests",
                                               MODEL, registry=r)
        self.model_info = Gauge("lsrcnn_model_info", "Loaded model: preset, active provider, "
                                "architecture, and the runtime and precision chosen at "
                                "warm-up", [*MODEL, "preset", "provider", "arch", "engine",
                                            "precision"], registry=r)
        self.model_load_failures = Counter("lsrcnn_model_load_failures_total",
                                           "Model files that failed to load", ["file"],
                                           registry=r)
        # The jobs API (app/jobs.py), read from its manager at scrape time (watch_jobs).
        self.jobs = Gauge("lsrcnn_jobs", "Jobs in the spool by status", ["status"], registry=r)
        self.spool_bytes = Gauge("lsrcnn_spool_bytes",
                                 "Bytes in the jobs spool, and promised to results not written",
                                 registry=r)
        self.jobs_finished = Counter("lsrcnn_jobs_finished_total",
                                     "Jobs that ended, by status (done, failed, cancelled)",
                                     ["status"], registry=r)
        self.jobs_taken_over = Counter("lsrcnn_jobs_taken_over_total",
                                       "Jobs this replica took over from another whose lease "
                                       "ran out (a shared job store)", registry=r)

    def watch_jobs(self, count: Callable[[str], int], spool_bytes: Callable[[], int],
                   statuses: tuple[str, ...]) -> None:
        for status in statuses:
            self.jobs.labels(status).set_function(lambda status=status: count(status))
        self.spool_bytes.set_function(spool_bytes)

    def watch(self, labels: tuple[str, str], sched: Scheduler) -> None:
        """Gauges read from the scheduler at scrape time: always current, never stale."""
        self.queue_depth.labels(*labels).set_function(lambda: sched.waiting_tiles)
        self.queue_work.labels(*labels).set_function(lambda: sched.drain_s)
        self.pixel_cost.labels(*labels).set_function(
            lambda: sched.cost.per_pixel_s * sched.cost.factor)
        self.cost_factor.labels(*labels).set_function(lambda: sched.cost.factor)
