"""What runs a model: one small interface, two runtimes.

- ONNX Runtime: one session per model, shared by the workers (its `run` is thread-safe);
  CPU or CUDA, fp32.
- OpenVINO: the same `.onnx` file compiled once per model with one stream per worker, and
  one infer request per worker (a compiled model per worker measured slower: the streams
  are OpenVINO's own way of running calls side by side). CPU, fp32 or bf16.

Both take [N, 1, H, W] float32 and give the model's output as float32, whatever the
precision inside. Neither knows about tiles, scales or HTTP.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model import contract

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
FP32, BF16 = "fp32", "bf16"
OV_PRECISION = {FP32: "f32", BF16: "bf16"}


class Runner(Protocol):
    engine: str  # onnxruntime | openvino
    precision: str  # fp32 | bf16: what the runtime reports it runs, not what was asked
    provider: str  # where it runs, as the runtime names it

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def release(self) -> bool:
        """Hand back memory held between calls, if no call is running; whether it did."""
        ...


class OrtRunner:
    """An ONNX Runtime session behind the runner interface."""

    engine, precision = ONNXRUNTIME, FP32

    def __init__(self, session: Any) -> None:
        self.session = session
        self.provider: str = session.get_providers()[0]  # the truth, whatever was asked

    def run(self, x: np.ndarray) -> np.ndarray:
        (y,) = self.session.run(None, {contract.INPUT_NAME: x})
        return y

    def release(self) -> bool:
        return False  # the shared arena keeps one peak for every session, by design


def _openvino() -> Any:
    import openvino

    return openvino


def openvino_version() -> str | None:
    """OpenVINO's version where it is installed (an optional dependency), else None."""
    try:
        return str(_openvino().__version__)
    except ImportError:
        return None


_CAPABILITIES: list[set[str]] = []


def cpu_capabilities() -> set[str]:
    """What OpenVINO's CPU plugin says this processor does natively (FP32, BF16, INT8, ...);
    empty without OpenVINO. BF16 is listed only where the instructions exist (AVX-512 BF16
    or AMX): elsewhere bf16 would be emulated, slower than fp32."""
    if not _CAPABILITIES:
        try:
            caps = _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            _CAPABILITIES.append({str(c).upper() for c in caps})
        except Exception:  # no OpenVINO, or a CPU plugin that does not load
            _CAPABILITIES.append(set())
    return _CAPABILITIES[0]


class OpenVinoRunner:
    """One compiled model with `streams` streams and as many infer requests, lent out one per
    call: a worker thread holds one while its call runs (the GIL is released inside).

    Each request keeps the intermediate buffers of the largest tile it ran (about 47 MB at
    184x184 for the lite model), so `release` hands them back when the model is idle: the
    next call allocates them again (about 20 ms)."""

    engine, provider = OPENVINO, "OpenVINO CPU"

    def __init__(self, path: Path, precision: str, streams: int, threads: int) -> None:
        ov = _openvino()
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
                  "NUM_STREAMS": str(streams), "INFERENCE_NUM_THREADS": str(streams * threads)}
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = BF16 if got == ov.Type.bf16 else FP32
        self.output = self.compiled.output(0)
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(streams):
            self.requests.put(self.compiled.create_infer_request())
        self._lock = threading.Lock()  # release_memory must not meet a running call
        self._running = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        request = self.requests.get()
        with self._lock:
            self._running += 1
        try:
            # Copied out: the request's output buffer is reused by its next call.
            return np.array(request.infer({0: x})[self.output], np.float32, copy=True)
        finally:
            with self._lock:
                self._running -= 1
            self.requests.put(request)

    def release(self) -> bool:
        with self._lock:
            if self._running:
                return False
            self.compiled.release_memory()
            return True
