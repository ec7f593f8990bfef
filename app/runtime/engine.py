"""The models by name: device choice, loading, the runtime chosen at warm-up, batched runs.

Every model opens first as an ONNX Runtime session (the contract's check and the fp32
reference); at warm-up `choice` may put an OpenVINO runner in its place. Knows nothing
about HTTP. `run` is blocking; the scheduler calls it from a worker thread.

No I/O binding: every tile is cut on the host and its output pasted on the host, so a call
copies its input in and its output out once either way; binding would save an output
allocation per call and tie a session to one device buffer per shape and batch size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app.runtime import choice, device, registry, runners
from app.runtime.device import CPU, CUDA, Device, DeviceError
from app.runtime.registry import ModelFile, ModelInfo
from app.runtime.runners import OpenVinoRunner, OrtRunner, Runner
from app.settings import Settings
from model import contract

try:
    import onnxruntime as ort
except ImportError as err:  # pragma: no cover - an install without the cpu or gpu extra
    raise ImportError("onnxruntime is missing: install lsrcnn[cpu] or lsrcnn[gpu]") from err

log = logging.getLogger("app.runtime.engine")


class EngineError(RuntimeError):
    """The model failed or answered something unusable; `failure_id` names the log line
    that holds ONNX Runtime's own message and traceback."""

    def __init__(self, message: str, failure_id: str | None = None) -> None:
        super().__init__(message)
        self.failure_id = failure_id


_ARENA: list[bool] = []


class NoDefaultModel(EngineError):
    """The load found no model for the default scale; the others are loaded."""


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


def cuda_listed() -> bool:
    """Whether this ONNX Runtime build lists CUDA: not whether a GPU is usable."""
    return CUDA in ort.get_available_providers()


def _timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


class Engine:
    """One runner per model, keyed by the model's name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runners: dict[str, Runner] = {}
        self.models: dict[str, ModelInfo] = {}
        self.device = Device(False, "not loaded")
        self.decided = False  # the device is chosen at the first load, once
        self.failed: dict[str, str] = {}  # model file name -> why it did not load
        self._failures = 0

    @property
    def on_gpu(self) -> bool:
        return self.device.on_gpu

    @property
    def names(self) -> list[str]:
        """Loaded models, by scale then name."""
        return sorted(self.models, key=lambda n: (self.models[n].scale, n))

    @property
    def scales(self) -> list[int]:
        return sorted({info.scale for info in self.models.values()})

    def model_for(self, scale: int, kind: str = contract.CLEAN, strength: str = ""
                  ) -> str | None:
        """The model of a kind (and, for photo models, of a strength where there is one)
        that serves a scale when a request names none (LSRCNN_PRESET picks among presets);
        None for a photo model where the scale has none."""
        return registry.pick(list(self.models.values()), scale, self.settings.preset,
                             self.on_gpu, kind, strength)

    def session(self, path: Path, options: ort.SessionOptions | None, providers: list
                ) -> ort.InferenceSession:
        """Every session is made here (tests put a fake in its place)."""
        return ort.InferenceSession(str(path), options, providers=providers)

    def _options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        # Decided from the device the probe found active, not from what is listed.
        opts.intra_op_num_threads = self.settings.resolved_threads(self.on_gpu)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Tile shapes vary per image: a memory pattern per shape would only pile up.
        opts.enable_mem_pattern = False
        if shared_cpu_arena():
            opts.add_session_config_entry("session.use_env_allocators", "1")
        return opts

    def _probe(self, files: list[ModelFile]) -> Callable[[list], list[str]]:
        """Open one model asking for `providers`; the active providers it reports."""
        def active(providers: list) -> list[str]:
            for f in files:
                try:
                    return self.session(f.path, None, providers).get_providers()
                except Exception as err:  # this file is broken; its own load will say so
                    log.debug("probe with %s failed: %s", f.path.name, err)
            return [CPU]
        return active

    def load(self) -> None:
        """Find the device (once), then load every model file not loaded yet; a file that
        fails is skipped (kept in `failed`). A required GPU that is not active fails the
        whole load; a missing default scale raises NoDefaultModel with the other models
        loaded, so they can serve while the default is retried."""
        s = self.settings
        self.failed = {}
        files = registry.discover(s.model_dir, self.failed)
        available = ort.get_available_providers()
        if not self.decided:
            try:
                self.device = device.decide(s, available, self._probe(files))
            except DeviceError as err:
                raise EngineError(str(err)) from err
            self.decided = True
            log.info("device: %s", self.device.reason, extra={"fields": {
                "on_gpu": self.on_gpu, "available": available}})
        providers = device.requested(s, available) if self.on_gpu else [CPU]
        for f in (f for f in files if f.name not in self.models):
            try:
                self._load_one(f, providers)
            except Exception as err:
                self.failed[f.path.name] = cause = registry.cause_of(err, f.path)
                log.error("model %s failed to load: %s", f.path.name, cause,
                          extra={"fields": {"file": f.path.name, "cause": cause}})
        if self.model_for(s.default_scale) is None:
            missing = ", ".join(sorted(self.failed)) or "none found"
            raise NoDefaultModel(f"no model for the default scale x{s.default_scale} "
                                 f"(failed: {missing})")

    def _load_one(self, f: ModelFile, providers: list) -> None:
        session = self.session(f.path, self._options(), providers)
        inputs = [(a.name, a.type) for a in session.get_inputs()]
        outputs = [(a.name, a.type) for a in session.get_outputs()]
        if inputs != [(contract.INPUT_NAME, "tensor(float)")] or \
                outputs != [(contract.OUTPUT_NAME, "tensor(float)")]:
            raise EngineError(f"tensors {inputs} -> {outputs} are not the contract's one "
                              f"float input '{contract.INPUT_NAME}' and output "
                              f"'{contract.OUTPUT_NAME}'")
        active = session.get_providers()[0]  # the truth, whatever was asked for
        if self.settings.providers == "cuda" and active != CUDA:
            raise EngineError(f"CUDA required but {f.path.name} runs on {active}")
        if self.on_gpu and active != CUDA:
            log.warning("model %s runs on %s although CUDA is active", f.name, active)
        self.runners[f.name] = OrtRunner(session)
        self.models[f.name] = ModelInfo(f.path, f.descriptor, active)
        log.info("loaded %s (%s, x%d) from %s on %s", f.name, f.descriptor.arch,
                 f.descriptor.scale, f.path.name, active)

    def drop(self, name: str, cause: str) -> None:
        """Take a loaded model out of service (it failed after loading), keeping why."""
        info = self.models.pop(name)
        self.runners.pop(name, None)
        self.failed[info.path.name] = cause

    def candidates(self) -> tuple[list[choice.Candidate], list[str]]:
        s = self.settings
        return choice.candidates(s.engine, s.precision, self.on_gpu,
                                 runners.openvino_version() is not None,
                                 runners.cpu_capabilities())

    def openvino(self, name: str, precision: str, workers: int) -> Runner:
        """An OpenVINO runner of a loaded model (tests put a fake in its place)."""
        return OpenVinoRunner(self.models[name].path, precision, workers,
                              self.settings.resolved_threads(self.on_gpu))

    def choose(self, name: str, shape: tuple[int, int], workers: int) -> None:
        """Put the fastest runner that passes the quality gate in service for `name`, and
        record every candidate's trial in its ModelInfo."""
        cands, notes = self.candidates()
        tile = np.random.default_rng(0).random((1, 1, *shape), dtype=np.float32)
        runner, trials = choice.choose(
            lambda c: self.openvino(name, c.precision, workers), self.runners[name], cands,
            tile, workers, self.settings.gate_psnr_db)
        info = self.models[name]
        self.runners[name] = runner
        info.engine, info.precision, info.provider = (runner.engine, runner.precision,
                                                      runner.provider)
        info.trials, info.notes = [t.to_dict() for t in trials], notes
        log.info("%s runs on %s %s", name, runner.engine, runner.precision, extra={"fields": {
            "model": name, "trials": info.trials, "notes": notes}})
        for t in trials:
            if not t.passed:
                log.warning("%s: %s %s not used: %s", name, t.engine, t.precision, t.reason)

    def warm_up(self, name: str, shape: tuple[int, int], batch_sizes: tuple[int, ...],
                workers: int) -> list[tuple[int, int, float]]:
        """Choose the runtime (`choose`), then run every batch size at the largest tile shape
        once (no call meets a first-time algorithm search), the largest `workers` times at
        once (so the arena holds what a full load needs), then time single tiles of a few
        shapes, from tiny to the largest and thin both ways: (h, w, seconds) for the cost
        model."""
        self.choose(name, shape, workers)
        sizes = sorted(batch_sizes or (1,))
        for n in sizes[:-1]:
            self.run(name, np.zeros((n, 1, *shape), np.float32))
        x = np.zeros((sizes[-1], 1, *shape), np.float32)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda x: self.run(name, x), [x] * workers))
        h, w = shape
        rng = np.random.default_rng(0)
        samples = []
        for th, tw in ((8, 8), (1, w), (h, 1), (h // 2, w // 2), (h, w)):
            x = rng.random((1, 1, th, tw), dtype=np.float32)
            samples.append((th, tw, min(_timed(lambda x=x: self.run(name, x))
                                        for _ in range(2))))
        self.runners[name].release()  # one model's buffers at a time, not all at the peak
        return samples

    def release(self) -> int:
        """Hand back the memory runners hold between calls (OpenVINO's buffers) where no
        call is running; how many released."""
        return sum(bool(r.release()) for r in list(self.runners.values()))

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        """[N, 1, H, W] of Y/255 in, [N, 1, sH, sW] out (same scale), by the contract."""
        runner, scale = self.runners[name], self.models[name].scale
        try:
            y = runner.run(x)
        except Exception as err:
            # Keep the runtime's own message and traceback; requests log this failure id.
            self._failures += 1
            fid = f"{name}-{self._failures}"
            log.exception("model call failed on %s (%d tiles): %s", name, len(x), err,
                          extra={"fields": {"failure_id": fid, "model": name}})
            raise EngineError(f"inference failed on {name}: {err}", fid) from err
        expected = contract.output_shape(x.shape, scale)
        if y.shape != expected:
            raise EngineError(f"model {name} returned {y.shape}, expected {expected}")
        return y
