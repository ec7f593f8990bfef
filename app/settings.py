"""One typed settings object, read from LSRCNN_* environment variables (or passed in tests)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.runtime.choice import GATE_PSNR_DB

BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "model" / "weights"


# Measured on Set5 and Set14 (model/weights/README.md): below this JPEG quality the photo
# model beats the clean one; below the strong bound the strong photo model beats the medium
# one, from the mild bound the mild one does, the medium one between.
PHOTO_BELOW_QUALITY = 93
PHOTO_STRONG_BELOW = 60
PHOTO_MILD_FROM = 85


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LSRCNN_", env_file=None)

    # Models
    model_dir: Path = Field(BUNDLED_MODELS, description="folder of *.onnx models")
    default_scale: int = Field(2, description="scale used when a request names none")
    photo_below_quality: int = Field(
        PHOTO_BELOW_QUALITY, ge=0, le=101,
        description="a JPEG whose estimated quality (from its quantization tables) is below "
                    "this goes to the photo model of its scale when the request names no "
                    "model; everything else to the clean one (0: never, 101: every JPEG)")
    photo_strong_below: int = Field(
        PHOTO_STRONG_BELOW, ge=0, le=101, description="among photo models: a JPEG below "
        "this estimated quality gets the scale's strong one, where there is one")
    photo_mild_from: int = Field(
        PHOTO_MILD_FROM, ge=0, le=101, description="among photo models: a JPEG of this "
        "estimated quality or more gets the scale's mild one, where there is one")
    preset: str = Field("auto", description="preset where several files serve one scale: "
                        "auto = lsrcnn on the GPU, lsrcnn-lite on the CPU")
    # Execution
    providers: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: CUDA if really active, else CPU; cuda: required (not ready "
        "without it); cpu: CPU only")
    device_id: int = Field(0, description="CUDA device index")
    engine: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto", description="the runtime on the CPU: auto = each model's fastest candidate "
        "measured at warm-up that passes the quality gate; openvino needs the package "
        "(installed by default on x86-64 Linux); on the GPU always onnxruntime")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 is a candidate where the CPU has bf16 instructions "
        "and OpenVINO is installed; bf16: only bf16, fp32 as the fallback; fp32: never bf16")
    gate_psnr_db: float = Field(
        GATE_PSNR_DB, gt=0, description="a candidate runtime's output on the bundled check "
        "image must match ONNX Runtime fp32's to at least this PSNR (dB), or it never serves")
    workers: int = Field(0, ge=0, description="model calls in flight at once per scale "
                         "(0 = auto: one per core on the CPU, 1 on the GPU)")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per call "
                                  "(0 = auto: cores / workers)")
    # Tiling, batching and admission
    tile_size: int = Field(176, ge=8, description="largest tile core side in LR pixels; a tile "
                           "is at most tile_size + 2 * tile_overlap on each side")
    tile_overlap: int = Field(4, ge=0, description="LR context pixels kept around each tile core")
    tile_multiple: int = Field(0, ge=0, description="round tile sides up to a multiple of this, "
                               "so fewer shapes need warming (0 = auto: 1 on the CPU, 32 on "
                               "the GPU)")
    max_batch_size: int = Field(0, ge=0, description="tiles of one shape per model call (0 = "
                                "auto: 1 on the CPU, where batching measured slower; 8 on the GPU)")
    queue_limit: int = Field(2048, ge=1, description="tiles waiting, per model; beyond: 503")
    max_batch_images: int = Field(64, ge=1, description="images one v2 infer request may "
                                  "hold (413 beyond)")
    max_tiles_per_request: int = Field(4096, ge=1, description="tiles one request may need; "
                                       "beyond: 413")
    admission_headroom: float = Field(0.8, gt=0, le=1, description="share of a request's "
                                      "deadline that estimated model work may fill (the rest "
                                      "is decoding, encoding and estimate error)")
    request_timeout_s: float = Field(60.0, gt=0, description="deadline per request; beyond: 504")
    # Limits
    max_body_bytes: int = Field(32 * 1024 * 1024, description="request body limit (413)")
    max_input_pixels: int = Field(16_000_000, description="input pixel limit (413)")
    max_output_pixels: int = Field(64_000_000, description="output pixel limit (413)")
    # Output
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level of PNG output")
    # Server
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 in the container)")
    port: int = Field(8000, description="bind port")
    graceful_timeout_s: float = Field(20.0, gt=0, description="on SIGTERM, time for in-flight "
                                      "requests")
    log_level: str = Field("info", description="log level")
    # Edge: clients, shutdown, model faults, exposure
    client_timeout_s: float = Field(30.0, gt=0, description="time to send the whole request "
                                    "body; beyond: 408")
    header_timeout_s: float = Field(10.0, gt=0, description="time to send a request's headers "
                                    "(first request included); beyond: connection closed")
    keep_alive_s: int = Field(5, ge=1, description="idle keep-alive connections close after this")
    shutdown_delay_s: float = Field(0.0, ge=0, description="on SIGTERM, seconds readiness and new "
                                    "requests answer 503 before the listener closes")
    model_retry_s: float = Field(30.0, ge=0, description="while the default scale's model fails "
                                 "to load, retry after this many seconds (0 = never)")
    cors_origins: str = Field("", description="comma-separated origins allowed cross-origin "
                              "(CORS); empty: none")
    allowed_hosts: str = Field("", description="comma-separated names the Host header may "
                               "carry (400 otherwise: no DNS rebinding); empty: the loopback "
                               "names and LSRCNN_HOST; * any (the container image's default)")
    api_key: SecretStr | None = Field(None, description="when set, /upscale needs "
                                      "`Authorization: Bearer <key>`")
    docs: bool = Field(False, description="serve /docs and /redoc (their scripts load from a "
                       "public CDN); /openapi.json is always served")
    # Jobs API (/v1/jobs): big images in the background, spooled to disk
    spool_dir: Path = Field(Path(tempfile.gettempdir()) / "lsrcnn-spool",
                            description="folder of spooled jobs (input, state, result); mount "
                            "a volume here so jobs outlive the container")
    spool_max_bytes: int = Field(2 * 1024**3, ge=1, description="bytes of inputs and results "
                                 "the spool may hold; beyond: 503 with Retry-After")
    job_ttl_s: float = Field(3600.0, gt=0, description="seconds a finished job and its result "
                             "are kept")
    jobs_store: SecretStr = Field(SecretStr(""), description="where jobs live: empty for the "
                                  "spool of this process; redis://[:password@]host:6379/0 for "
                                  "a Redis shared by every replica (any replica answers any "
                                  "job; none's death loses one)")
    job_lease_s: float = Field(30.0, gt=0, description="with a shared store: seconds a job's "
                               "replica may go silent before another takes the job over")
    job_pull_below_s: float = Field(2.0, gt=0, description="with a shared store: a replica "
                                    "takes the next job only while its queued request work "
                                    "is below this many seconds")
    job_max_input_pixels: int = Field(64_000_000, ge=1, description="input pixel limit of a "
                                      "job (413)")
    job_max_output_pixels: int = Field(0, ge=0, description="output pixel limit of a job (413); "
                                       "0 = LSRCNN_MAX_OUTPUT_PIXELS")

    @model_validator(mode="after")
    def _runtime_precision(self) -> Settings:
        if self.engine == "onnxruntime" and self.precision == "bf16":
            raise ValueError("LSRCNN_PRECISION=bf16 needs LSRCNN_ENGINE=openvino or auto: "
                             "ONNX Runtime runs these models in fp32")
        return self

    @property
    def allowed_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def hosts(self) -> set[str]:
        """The Host names served (lower case, no port); {"*"} for any."""
        given = {h.strip().lower().strip("[]") for h in self.allowed_hosts.split(",")
                 if h.strip()}
        return given or {"localhost", "127.0.0.1", "::1", self.host.lower().strip("[]")}

    def resolved_workers(self, on_gpu: bool) -> int:
        if self.workers:
            return self.workers
        return 1 if on_gpu else max(1, os.cpu_count() or 1)

    def resolved_threads(self, on_gpu: bool) -> int:
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // self.resolved_workers(on_gpu))

    def resolved_batch(self, on_gpu: bool) -> int:
        return self.max_batch_size or (8 if on_gpu else 1)

    def resolved_multiple(self, on_gpu: bool) -> int:
        return self.tile_multiple or (32 if on_gpu else 1)

    def batch_sizes(self, on_gpu: bool) -> tuple[int, ...]:
        """Batch sizes the model is called with: powers of two on the GPU (each warmed, so
        no call meets a first-time algorithm search); any size on the CPU (no padding)."""
        if not on_gpu:
            return ()
        top = self.resolved_batch(on_gpu)
        return tuple(sorted({min(2**k, top) for k in range(top.bit_length() + 1)}))

    def warm_batch_sizes(self, on_gpu: bool) -> tuple[int, ...]:
        """Batch sizes to warm: on the GPU every size a call can have (the padded sizes; each
        shape has its own cuDNN algorithm search); on the CPU the largest, which sizes the
        arena for the worst call; smaller batches there have nothing of their own to
        prepare (measured: after the largest, a first call at a smaller size takes as long
        as later ones)."""
        return self.batch_sizes(on_gpu) or (self.resolved_batch(on_gpu),)
