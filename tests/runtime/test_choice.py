"""The runtime and precision of each model, chosen at warm-up: candidates from the settings
and the processor's capabilities (faked), the quality gate, the fastest by timings (faked),
and each installed runtime against ONNX Runtime fp32 for real."""

from __future__ import annotations

import asyncio
import io
import logging

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from app.runtime import choice, runners
from app.runtime.choice import GATE_PSNR_DB, Candidate, candidates, check_input, psnr
from app.runtime.engine import Engine
from app.runtime.runners import BF16, FP32, ONNXRUNTIME, OPENVINO
from app.settings import Settings
from tests.helpers import direct, make_app, png_bytes, running, set5_crop

HAS_OPENVINO = runners.openvino_version() is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
ORT, OV32, OV16 = (Candidate(ONNXRUNTIME, FP32), Candidate(OPENVINO, FP32),
                   Candidate(OPENVINO, BF16))


# -- candidates: what the settings allow and this machine has ---------------------------


@pytest.mark.parametrize(("engine", "precision", "on_gpu", "openvino", "caps", "want"), [
    ("auto", "auto", False, True, {"FP32", "BF16"}, [ORT, OV16, OV32]),
    ("auto", "auto", False, True, {"FP32"}, [ORT, OV32]),  # no bf16 instructions: no bf16
    ("auto", "auto", False, False, {"FP32", "BF16"}, [ORT]),  # no openvino
    ("auto", "fp32", False, True, {"FP32", "BF16"}, [ORT, OV32]),
    ("auto", "bf16", False, True, {"FP32", "BF16"}, [OV16, OV32]),  # fp32 as the fallback
    ("auto", "bf16", False, True, {"FP32"}, [OV32]),
    ("openvino", "auto", False, False, set(), [ORT]),  # asked for, not installed
    ("onnxruntime", "auto", False, True, {"FP32", "BF16"}, [ORT]),
    ("auto", "auto", True, True, {"FP32", "BF16"}, [ORT]),  # the GPU: ONNX Runtime CUDA
])
def test_candidates(engine: str, precision: str, on_gpu: bool, openvino: bool,
                    caps: set[str], want: list[Candidate]) -> None:
    got, notes = candidates(engine, precision, on_gpu, openvino, caps)
    assert got == want
    if openvino and not on_gpu and "BF16" not in caps and precision != "fp32":
        assert "this CPU has no bf16 instructions" in notes


def test_bf16_on_onnxruntime_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="needs LSRCNN_ENGINE=openvino or auto"):
        Settings(engine="onnxruntime", precision="bf16")


# -- the choice, with fake runners and faked timings ------------------------------------


class Fake:
    """A runner whose output is the reference's plus a fixed error."""

    def __init__(self, engine: str, precision: str, error: float = 0.0,
                 reports: str | None = None) -> None:
        self.engine, self.provider = engine, f"{engine} CPU"
        self.precision = reports or precision
        self.error = error

    def run(self, x: np.ndarray) -> np.ndarray:
        y = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)
        return y + self.error

    def release(self) -> bool:
        return False


def _choose(fakes: dict[Candidate, Fake], ms: dict[str, float]) -> tuple:
    return choice.choose(lambda c: fakes[c], Fake(ONNXRUNTIME, FP32), list(fakes),
                         np.zeros((1, 1, 8, 8), np.float32), workers=2,
                         timer=lambda run, tile, workers: ms[run.__self__.engine
                                                            + run.__self__.precision])


def test_the_fastest_candidate_that_passes_the_gate_serves() -> None:
    fakes = {ORT: Fake(ONNXRUNTIME, FP32), OV16: Fake(OPENVINO, BF16, 1e-3),
             OV32: Fake(OPENVINO, FP32, 1e-7)}
    runner, trials = _choose(fakes, {"onnxruntimefp32": 60, "openvinobf16": 33,
                                     "openvinofp32": 48})
    assert (runner.engine, runner.precision) == (OPENVINO, BF16)
    assert [t.reason for t in trials] == ["slower", "fastest: serves", "slower"]
    assert trials[1].gate_psnr_db == pytest.approx(60.0, abs=0.01)  # an error of 1e-3 is 60 dB
    # Timings decide, not names: make bf16 the slowest and fp32 ONNX Runtime serves.
    runner, _ = _choose(fakes, {"onnxruntimefp32": 30, "openvinobf16": 33, "openvinofp32": 48})
    assert (runner.engine, runner.precision) == (ONNXRUNTIME, FP32)


def test_a_precision_that_fails_the_gate_falls_back_to_fp32() -> None:
    fakes = {ORT: Fake(ONNXRUNTIME, FP32), OV16: Fake(OPENVINO, BF16, 0.02),  # 34 dB
             OV32: Fake(OPENVINO, FP32)}
    runner, trials = _choose(fakes, {"onnxruntimefp32": 60, "openvinobf16": 10,
                                     "openvinofp32": 48})
    assert (runner.engine, runner.precision) == (OPENVINO, FP32)
    assert not trials[1].passed and trials[1].ms_per_tile is None  # never even timed
    assert trials[1].reason.startswith("quality gate: 34.0 dB against fp32")


def test_a_runtime_that_does_not_run_what_was_asked_is_not_used() -> None:
    fakes = {ORT: Fake(ONNXRUNTIME, FP32), OV16: Fake(OPENVINO, BF16, reports=FP32)}
    runner, trials = _choose(fakes, {"onnxruntimefp32": 60, "openvinofp32": 10})
    assert (runner.engine, runner.precision) == (ONNXRUNTIME, FP32)
    assert trials[1].reason == "the runtime runs fp32, not bf16"


def test_a_candidate_that_fails_to_build_costs_only_itself() -> None:
    def make(c: Candidate) -> Fake:
        raise RuntimeError("compile failed")

    runner, trials = choice.choose(make, Fake(ONNXRUNTIME, FP32), [ORT, OV16],
                                   np.zeros((1, 1, 8, 8), np.float32), 2,
                                   timer=lambda *a: 50.0)
    assert runner.engine == ONNXRUNTIME
    assert trials[1].reason == "failed: compile failed" and trials[0].passed


def test_psnr() -> None:
    a = np.zeros((4, 4), np.float32)
    assert psnr(a, a) == float("inf")
    assert psnr(a + 0.1, a) == pytest.approx(20.0)
    assert psnr(a - 5, a) == float("inf")  # clipped as the service clips


# -- the engine: faked capabilities, then each installed runtime for real ---------------


def test_a_cpu_without_bf16_never_runs_bf16(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runners, "cpu_capabilities", lambda: {"FP32"})
    monkeypatch.setattr(runners, "openvino_version", lambda: "faked")
    built: list[str] = []

    class Recording(Engine):
        def openvino(self, name: str, precision: str, workers: int) -> Fake:
            built.append(precision)
            return Fake(OPENVINO, precision)

    engine = Recording(Settings(precision="bf16"))
    engine.load()
    with caplog.at_level(logging.INFO, logger="app.runtime.engine"):
        engine.choose("lsrcnn-lite-x2", (16, 16), 2)
    info = engine.models["lsrcnn-lite-x2"]
    assert built == [FP32] and info.precision == FP32
    assert "this CPU has no bf16 instructions" in info.notes
    assert "bf16 asked for but unavailable: fp32" in info.notes


@needs_openvino
def test_openvino_hands_back_its_buffers_when_idle_only() -> None:
    engine = Engine(Settings())
    engine.load()
    runner = runners.OpenVinoRunner(engine.models["lsrcnn-lite-x2"].path, FP32, 1, 1)
    x = np.random.default_rng(2).random((1, 1, 24, 24), dtype=np.float32)
    want = runner.run(x)
    assert runner.release()
    runner._running = 1  # a call in flight: nothing is released under it
    assert not runner.release()
    runner._running = 0
    assert np.array_equal(runner.run(x), want)  # and it runs as before, buffers anew


@needs_openvino
def test_openvino_against_onnxruntime_fp32_on_a_tile() -> None:
    x = np.random.default_rng(1).random((2, 1, 40, 56), dtype=np.float32)
    want = direct("lsrcnn-lite-x3", x)
    engine = Engine(Settings())
    engine.load()
    path = engine.models["lsrcnn-lite-x3"].path
    fp32 = runners.OpenVinoRunner(path, FP32, streams=1, threads=1)
    assert fp32.precision == FP32
    assert np.abs(fp32.run(x) - want).max() < 1e-4
    if "BF16" in runners.cpu_capabilities():
        bf16 = runners.OpenVinoRunner(path, BF16, streams=1, threads=1)
        assert bf16.precision == BF16
        assert psnr(bf16.run(x), want) >= GATE_PSNR_DB
        assert psnr(bf16.run(check_input()), direct("lsrcnn-lite-x3", check_input())) \
            >= GATE_PSNR_DB


@needs_openvino
def test_the_service_runs_end_to_end_on_openvino() -> None:
    img = set5_crop("butterfly", (0, 0, 64, 48))

    async def main() -> None:
        app = make_app(engine="openvino")
        async with running(app) as c:
            models = (await c.get("/v1/models")).json()["models"]
            assert {m["engine"] for m in models} == {OPENVINO}
            assert all(t["passed"] for m in models for t in m["engine_trials"]
                       if t["engine"] == m["engine"] and t["precision"] == m["precision"])
            r = await c.post("/upscale?scale=2&kind=clean", content=png_bytes(img),
                             headers={"content-type": "image/png"})
            assert r.status_code == 200 and r.headers["x-model"] == "lsrcnn-lite-x2"
            out = np.asarray(Image.open(io.BytesIO(r.content)).convert("L"), np.float32)
            assert out.shape == (96, 128)
            text = (await c.get("/metrics")).text
            assert 'engine="openvino"' in text

    asyncio.run(main())


def test_without_openvino_everything_runs_on_onnxruntime_as_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runners, "openvino_version", lambda: None)

    class NoOpenVino(Engine):
        def openvino(self, name: str, precision: str, workers: int) -> Fake:
            raise AssertionError("no OpenVINO runner may be built")

    engine = NoOpenVino(Settings())  # engine auto, precision auto
    engine.load()
    engine.choose("lsrcnn-lite-x2", (16, 16), 2)
    info = engine.models["lsrcnn-lite-x2"]
    assert (info.engine, info.precision) == (ONNXRUNTIME, FP32)
    assert info.notes == ["openvino is not installed"]
    assert info.trials == [{"engine": ONNXRUNTIME, "precision": FP32, "gate_psnr_db": None,
                            "ms_per_tile": None, "passed": True,
                            "reason": "the only candidate"}]
