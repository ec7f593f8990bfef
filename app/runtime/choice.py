"""Which runtime and precision serve a model, decided at warm-up by measurement.

Every candidate available here (ONNX Runtime fp32; OpenVINO fp32; OpenVINO bf16 where the
processor has bf16 instructions) first passes a quality gate: its output on a bundled
check image against ONNX Runtime fp32's, as PSNR. Those that pass run the warm-up tile,
all workers at once, as the service will; the fastest serves. A candidate that fails the
gate is logged with its reason and never serves, so a bad precision falls back to fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from app.runtime.runners import BF16, FP32, ONNXRUNTIME, OPENVINO, Runner

CHECK_IMAGE = Path(__file__).with_name("check.png")
# OpenVINO bf16 against ONNX Runtime fp32 on the check image measured 57.7-58.2 dB over the
# six bundled models, OpenVINO fp32 130-146 dB (docs/benchmarks.md, "bf16 engine"). 50 dB
# leaves room for other weights and still fails a conversion gone wrong (far below 40 dB).
GATE_PSNR_DB = 50.0


@dataclass(frozen=True)
class Candidate:
    engine: str
    precision: str

    def __str__(self) -> str:
        return f"{self.engine} {self.precision}"


@dataclass
class Trial:
    """One candidate's result at warm-up, as logged and shown in /v1/models."""

    engine: str
    precision: str
    gate_psnr_db: float | None = None  # against ONNX Runtime fp32 on the check image
    ms_per_tile: float | None = None  # the warm-up tile, every worker at once
    passed: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("gate_psnr_db", "ms_per_tile"):
            if d[key] is not None:
                d[key] = round(d[key], 2) if math.isfinite(d[key]) else None
        return d


def candidates(engine: str, precision: str, on_gpu: bool, openvino: bool,
               capabilities: set[str]) -> tuple[list[Candidate], list[str]]:
    """The candidates the settings allow and this machine has, and why the others are not
    candidates. fp32 stays a candidate even when bf16 is asked for: it is the fallback."""
    notes: list[str] = []
    if on_gpu:
        return [Candidate(ONNXRUNTIME, FP32)], ["on the GPU: ONNX Runtime CUDA, fp32"]
    out: list[Candidate] = []
    if engine in ("auto", ONNXRUNTIME) and precision != BF16:
        out.append(Candidate(ONNXRUNTIME, FP32))
    if engine in ("auto", OPENVINO):
        if not openvino:
            notes.append("openvino is not installed")
        else:
            if precision in ("auto", BF16):
                if "BF16" in capabilities:
                    out.append(Candidate(OPENVINO, BF16))
                else:
                    notes.append("this CPU has no bf16 instructions")
            out.append(Candidate(OPENVINO, FP32))
    if not out:  # openvino asked for and missing, or bf16 alone and impossible
        out.append(Candidate(ONNXRUNTIME, FP32))
        notes.append("falling back to onnxruntime fp32")
    elif precision == BF16 and all(c.precision == FP32 for c in out):
        notes.append("bf16 asked for but unavailable: fp32")
    return out, notes


@cache
def check_input() -> np.ndarray:
    """The bundled check image as the model's input: [1, 1, H, W] of Y/255."""
    y = np.asarray(Image.open(CHECK_IMAGE).convert("L"), np.float32) / 255.0
    return y[None, None]


def psnr(y: np.ndarray, ref: np.ndarray) -> float:
    """PSNR on the service's 0-1 scale, both clipped as the service clips its output."""
    mse = float(np.mean((np.clip(y, 0, 1) - np.clip(ref, 0, 1)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ms_per_tile(run: Callable[[np.ndarray], np.ndarray], tile: np.ndarray, workers: int,
                rounds: int = 3) -> float:
    """Wall time per tile with `workers` calls in flight at once (one untimed round first):
    the throughput the scheduler will get, not one call's latency."""
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, [tile] * workers))
        t0 = time.perf_counter()
        for _ in range(rounds):
            list(pool.map(run, [tile] * workers))
        return (time.perf_counter() - t0) * 1000 / (rounds * workers)


def choose(make: Callable[[Candidate], Runner], reference: Runner, cands: list[Candidate],
           tile: np.ndarray, workers: int, gate_db: float = GATE_PSNR_DB,
           timer: Callable[..., float] = ms_per_tile) -> tuple[Runner, list[Trial]]:
    """The fastest candidate that passes the gate, and every candidate's trial. `reference`
    is ONNX Runtime fp32 (or CUDA), already open; it serves if nothing else passes."""
    if len(cands) == 1 and cands[0] == Candidate(reference.engine, reference.precision):
        return reference, [Trial(reference.engine, reference.precision, passed=True,
                                 reason="the only candidate")]
    want = reference.run(check_input())
    trials: list[Trial] = []
    best: tuple[float, Runner] | None = None
    for cand in cands:
        trial = Trial(cand.engine, cand.precision)
        trials.append(trial)
        try:
            runner = reference if cand == Candidate(reference.engine, FP32) else make(cand)
            if runner.precision != cand.precision:  # the runtime says what it really runs
                trial.reason = f"the runtime runs {runner.precision}, not {cand.precision}"
                continue
            trial.gate_psnr_db = psnr(runner.run(check_input()), want)
            if trial.gate_psnr_db < gate_db:
                trial.reason = (f"quality gate: {trial.gate_psnr_db:.1f} dB against fp32 on "
                                f"the check image, under {gate_db:.1f} dB")
                continue
            trial.ms_per_tile = timer(runner.run, tile, workers)
            trial.passed = True
        except Exception as err:  # a candidate that fails to build or run costs only itself
            trial.reason = f"failed: {err}"
            continue
        if best is None or trial.ms_per_tile < best[0]:
            best = (trial.ms_per_tile, runner)
    if best is None:
        return reference, trials
    chosen = best[1]
    for trial in trials:
        if trial.passed:
            won = (trial.engine, trial.precision) == (chosen.engine, chosen.precision)
            trial.reason = "fastest: serves" if won else "slower"
    return chosen, trials
