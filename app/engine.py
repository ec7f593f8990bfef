"""ONNX Runtime sessions, one per scale: provider choice, warm-up, batched runs.

Knows nothing about HTTP. `run` is blocking; the batcher calls it from a worker thread.
"""

from __future__ import annotations

import logging
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
    """The model failed or answered something unusable."""


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


def discover(model_dir: Path) -> dict[int, list[tuple[Path, dict[str, str]]]]:
    """Every ONNX file in the folder grouped by the scale its metadata states."""
    found: dict[int, list[tuple[Path, dict[str, str]]]] = {}
    for path in sorted(Path(model_dir).glob("*.onnx")):
        meta = _metadata(path)
        if "scale" not in meta:
            log.warning("skipping %s: no 'scale' in its metadata", path.name)
            continue
        found.setdefault(int(meta["scale"]), []).append((path, meta))
    return found


def cuda_available() -> bool:
    return CUDA in ort.get_available_providers()


def choose(candidates: list[tuple[Path, dict[str, str]]], preset: str, on_gpu: bool
           ) -> tuple[Path, dict[str, str]]:
    wanted = preset if preset != "auto" else ("lsrcnn" if on_gpu else "lsrcnn-lite")
    for path, meta in candidates:
        if meta.get("preset") == wanted:
            return path, meta
    return candidates[0]  # the only one, or none of the wanted preset: take what there is


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: dict[int, ort.InferenceSession] = {}
        self.models: dict[int, ModelInfo] = {}
        self.on_gpu = False

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
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return opts

    def load(self) -> None:
        s = self.settings
        found = discover(s.model_dir)
        if not found:
            raise EngineError(f"no ONNX model with a scale in {s.model_dir}")
        wants_gpu = s.providers != "cpu" and cuda_available()
        for scale, candidates in sorted(found.items()):
            path, meta = choose(candidates, s.preset, wants_gpu)
            session = ort.InferenceSession(str(path), self._options(wants_gpu),
                                           providers=self._providers() if wants_gpu else [CPU])
            active = session.get_providers()[0]  # the truth, whatever was asked for
            if s.providers == "cuda" and active != CUDA:
                raise EngineError(f"CUDA required but {path.name} runs on {active}")
            self.on_gpu = self.on_gpu or active == CUDA
            self.sessions[scale] = session
            self.models[scale] = ModelInfo(scale, meta.get("preset", "unknown"), path, active, meta)
            log.info("loaded x%d %s from %s on %s", scale, meta.get("preset"), path.name, active)

    def warm_up(self, tile: int, batch: int) -> None:
        """Run the tile shape once at batch 1 and at the full batch, so first requests are fast."""
        for scale in self.scales:
            for n in sorted({1, batch}):
                self.run(scale, np.zeros((n, 1, tile, tile), np.float32))

    def run(self, scale: int, x: np.ndarray) -> np.ndarray:
        """[N, 1, T, T] of Y/255 in, [N, 1, sT, sT] out (same scale)."""
        session = self.sessions[scale]
        try:
            (y,) = session.run(None, {session.get_inputs()[0].name: x})
        except Exception as err:
            raise EngineError(f"inference failed on x{scale}: {type(err).__name__}") from err
        expected = (x.shape[0], 1, x.shape[2] * scale, x.shape[3] * scale)
        if y.shape != expected:
            raise EngineError(f"model x{scale} returned {y.shape}, expected {expected}")
        return y

