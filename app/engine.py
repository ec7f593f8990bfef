"""ONNX Runtime sessions, one per scale: provider choice, warm-up, batched runs.

Knows nothing about HTTP. `run` is blocking; the scheduler calls it from a worker thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.settings import Settings

try:
    import onnxruntime as ort
except ImportError as err:  # pragma: no cover - an install without the cpu or gpu extra
    raise ImportError("onnxruntime is missing: install lsrcnn[cpu] or lsrcnn[gpu]") from err

log = logging.getLogger("app.engine")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class EngineError(RuntimeError):
    """The model failed or answered something unusable; `failure_id` names the log line
    that holds ONNX Runtime's own message and traceback."""

    def __init__(self, message: str, failure_id: str | None = None) -> None:
        super().__init__(message)
        self.failure_id = failure_id


@dataclass
class ModelInfo:
    scale: int
    preset: str
    path: Path
    provider: str
    metadata: dict[str, str]

    def card(self) -> dict:
        keys = ("parameters", "macs_per_lr_pixel", "training_data", "iterations",
                "validation_set", "validation_psnr")
        return {k: self.metadata[k] for k in keys if k in self.metadata}


def _metadata(path: Path) -> dict[str, str]:
    session = ort.InferenceSession(str(path), providers=[CPU])
    return dict(session.get_modelmeta().custom_metadata_map)


def _cause(err: BaseException, path: Path) -> str:
    """The loader's own message, with this machine's folders cut down to the file name."""
    return str(err).replace(str(path), path.name).replace(str(path.parent), ".")


def discover(model_dir: Path, failed: dict[str, str] | None = None
             ) -> dict[int, list[tuple[Path, dict[str, str]]]]:
    """Every ONNX file in the folder grouped by the scale its metadata states. A file that
    does not open is skipped and its cause kept in `failed` (file name -> cause)."""
    found: dict[int, list[tuple[Path, dict[str, str]]]] = {}
    for path in sorted(Path(model_dir).glob("*.onnx")):
        try:
            meta = _metadata(path)
            scale = int(meta["scale"])
        except Exception as err:
            cause = "no 'scale' in its metadata" if isinstance(err, KeyError) else _cause(err, path)
            log.error("skipping model %s: %s", path.name, cause,
                      extra={"fields": {"file": path.name, "cause": cause}})
            if failed is not None:
                failed[path.name] = cause
            continue
        found.setdefault(scale, []).append((path, meta))
    return found


_ARENA: list[bool] = []


def shared_cpu_arena() -> bool:
    """One CPU arena for every session of the process, growing by what is asked for.

    Each session's own arena (the default) keeps its peak for good and rounds growth up to
    powers of two: three models and varying tile shapes then hold several times the memory
    one call needs. A shared arena sized by what is requested holds one peak for all.
    """
    if not _ARENA:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                     ort.OrtMemType.DEFAULT)
            # max_mem 0 = no cap; extend strategy 1 = kSameAsRequested; defaults otherwise.
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
            _ARENA.append(True)
        except Exception as err:  # pragma: no cover - an ONNX Runtime without the API
            log.warning("no shared CPU arena: %r", err)
            _ARENA.append(False)
    return _ARENA[0]


def cuda_available() -> bool:
    return CUDA in ort.get_available_providers()


def choose(candidates: list[tuple[Path, dict[str, str]]], preset: str, on_gpu: bool
           ) -> tuple[Path, dict[str, str]]:
    wanted = preset if preset != "auto" else ("lsrcnn" if on_gpu else "lsrcnn-lite")
    for path, meta in candidates:
        if meta.get("preset") == wanted:
            return path, meta
    return candidates[0]  # the only one, or none of the wanted preset: take what there is


def _timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: dict[int, ort.InferenceSession] = {}
        self.models: dict[int, ModelInfo] = {}
        self.on_gpu = False
        self.failed: dict[str, str] = {}  # model file name -> why it did not load
        self._failures = 0

    @property
    def scales(self) -> list[int]:
        return sorted(self.sessions)

    def _providers(self) -> list:
        s = self.settings
        cpu = CPU
        if s.providers == "cpu":
            return [cpu]
        cuda = (CUDA, {"device_id": s.device_id})
        return [cuda, cpu]

    def _options(self, on_gpu: bool) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.settings.resolved_threads(on_gpu)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Tile shapes vary per image: a memory pattern per shape would only pile up.
        opts.enable_mem_pattern = False
        if shared_cpu_arena():
            opts.add_session_config_entry("session.use_env_allocators", "1")
        return opts

    def load(self) -> None:
        """Load one model per scale. A file that fails is skipped (kept in `failed`); only a
        missing default scale fails the whole load."""
        s = self.settings
        self.sessions, self.models, self.failed = {}, {}, {}
        found = discover(s.model_dir, self.failed)
        wants_gpu = s.providers != "cpu" and cuda_available()
        for scale, candidates in sorted(found.items()):
            first = choose(candidates, s.preset, wants_gpu)
            # The preferred file first, then the others of this scale.
            for path, meta in [first, *[c for c in candidates if c[0] != first[0]]]:
                try:
                    self._load_one(scale, path, meta, wants_gpu)
                    break
                except Exception as err:
                    if s.providers == "cuda" and isinstance(err, EngineError):
                        raise
                    self.failed[path.name] = cause = _cause(err, path)
                    log.error("model %s failed to load: %s", path.name, cause,
                              extra={"fields": {"file": path.name, "cause": cause}})
        if s.default_scale not in self.sessions:
            missing = ", ".join(sorted(self.failed)) or "none found"
            raise EngineError(f"no model for the default scale x{s.default_scale} "
                              f"(failed: {missing})")

    def _load_one(self, scale: int, path: Path, meta: dict[str, str], wants_gpu: bool) -> None:
        s = self.settings
        session = ort.InferenceSession(str(path), self._options(wants_gpu),
                                       providers=self._providers() if wants_gpu else [CPU])
        active = session.get_providers()[0]  # the truth, whatever was asked for
        if s.providers == "cuda" and active != CUDA:
            raise EngineError(f"CUDA required but {path.name} runs on {active}")
        self.on_gpu = self.on_gpu or active == CUDA
        self.sessions[scale] = session
        self.models[scale] = ModelInfo(scale, meta.get("preset", "unknown"), path, active, meta)
        log.info("loaded x%d %s from %s on %s", scale, meta.get("preset"), path.name, active)

    def warm_up(self, scale: int, shape: tuple[int, int], batch_sizes: tuple[int, ...],
                workers: int) -> list[tuple[int, int, float]]:
        """Run every batch size at the largest tile shape, `workers` calls at once (so the
        arena holds what a full load needs), then time single tiles of a few shapes, from
        tiny to the largest and thin both ways: (h, w, seconds) for the cost model."""
        for n in batch_sizes or (1,):
            x = np.zeros((n, 1, *shape), np.float32)
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda x: self.run(scale, x), [x] * workers))
        h, w = shape
        rng = np.random.default_rng(0)
        samples = []
        for th, tw in ((8, 8), (1, w), (h, 1), (h // 2, w // 2), (h, w)):
            x = rng.random((1, 1, th, tw), dtype=np.float32)
            samples.append((th, tw, min(_timed(lambda x=x: self.run(scale, x))
                                        for _ in range(2))))
        return samples

    def run(self, scale: int, x: np.ndarray) -> np.ndarray:
        """[N, 1, T, T] of Y/255 in, [N, 1, sT, sT] out (same scale)."""
        session = self.sessions[scale]
        try:
            (y,) = session.run(None, {session.get_inputs()[0].name: x})
        except Exception as err:
            # Keep ONNX Runtime's own message and traceback; requests log this failure id.
            self._failures += 1
            fid = f"x{scale}-{self._failures}"
            log.exception("model call failed on x%d (%d tiles): %s", scale, len(x), err,
                          extra={"fields": {"failure_id": fid, "scale": scale}})
            raise EngineError(f"inference failed on x{scale}: {err}", fid) from err
        expected = (x.shape[0], 1, x.shape[2] * scale, x.shape[3] * scale)
        if y.shape != expected:
            raise EngineError(f"model x{scale} returned {y.shape}, expected {expected}")
        return y

