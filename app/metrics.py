"""Prometheus metrics, one registry per app (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lsrcnn_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("lsrcnn_request_seconds", "HTTP request latency",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("lsrcnn_queue_seconds",
                                       "Time a request's tiles waited for the model",
                                       ["scale"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("lsrcnn_inference_seconds",
                                           "Model time of one batch", ["scale"],
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("lsrcnn_batch_size", "Tiles per model call", ["scale"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("lsrcnn_queue_depth", "Tiles waiting", ["scale"], registry=r)
        self.tiles = Counter("lsrcnn_tiles_total", "Tiles run through the model", ["scale"],
                             registry=r)
        self.output_pixels = Counter("lsrcnn_output_pixels_total", "Pixels of upscaled output",
                                     ["scale"], registry=r)
        self.model_info = Gauge("lsrcnn_model_info", "Loaded model: preset and active provider",
                                ["scale", "preset", "provider"], registry=r)
        self.model_load_failures = Counter("lsrcnn_model_load_failures_total",
                                           "Model files that failed to load", ["file"],
                                           registry=r)
