"""Engine: models by name from their metadata, preset choice, and the device decided from
the providers a session reports active (faked here: no GPU needed to test the GPU path)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from app.runtime.device import CPU, CUDA, cuda_options
from app.runtime.engine import Engine, EngineError
from app.runtime.metrics import Metrics
from app.runtime.upscaler import Upscaler
from app.settings import Settings
from tests.conftest import WEIGHTS
from tests.helpers import fake_providers


def _copy_as(src: Path, dst: Path, **meta: str) -> None:
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(meta)
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(dst))


def test_scale_and_name_come_from_metadata_not_the_file_name(tmp_path: Path) -> None:
    shutil.copy(WEIGHTS / "lsrcnn-lite-x3.onnx", tmp_path / "misleading-x2.onnx")
    engine = Engine(Settings(model_dir=tmp_path, default_scale=3))
    engine.load()
    assert engine.scales == [3] and engine.names == ["lsrcnn-lite-x3"]
    info = engine.models["lsrcnn-lite-x3"]
    assert (info.arch, info.preset, info.path.name) == ("lsrcnn", "lsrcnn-lite",
                                                        "misleading-x2.onnx")
    out = engine.run("lsrcnn-lite-x3", np.zeros((2, 1, 10, 12), np.float32))
    assert out.shape == (2, 1, 30, 36)


def _two_presets(tmp_path: Path) -> None:
    src = WEIGHTS / "lsrcnn-lite-x2.onnx"
    shutil.copy(src, tmp_path / "a-lite.onnx")
    _copy_as(src, tmp_path / "b-full.onnx", preset="lsrcnn")


def test_every_file_is_a_model_and_the_preset_picks_the_scale_default(tmp_path: Path) -> None:
    _two_presets(tmp_path)
    auto = Engine(Settings(model_dir=tmp_path, providers="cpu"))
    auto.load()
    assert auto.names == ["lsrcnn-lite-x2", "lsrcnn-x2"]
    assert auto.model_for(2) == "lsrcnn-lite-x2"  # the CPU default
    chosen = Engine(Settings(model_dir=tmp_path, preset="lsrcnn"))
    chosen.load()
    assert chosen.model_for(2) == "lsrcnn-x2"
    assert chosen.models["lsrcnn-x2"].path.name == "b-full.onnx"
    assert chosen.model_for(3) is None


def test_bad_files_cost_only_themselves(tmp_path: Path) -> None:
    src = WEIGHTS / "lsrcnn-lite-x2.onnx"
    shutil.copy(src, tmp_path / "a.onnx")
    shutil.copy(src, tmp_path / "b-same-name.onnx")
    _copy_as(src, tmp_path / "c-no-preset.onnx", preset="")
    _copy_as(src, tmp_path / "d-arch.onnx", preset="other", arch="lsrcnn-v2")
    engine = Engine(Settings(model_dir=tmp_path))
    engine.load()
    assert engine.names == ["lsrcnn-lite-x2", "other-x2"]
    assert engine.models["other-x2"].arch == "lsrcnn-v2"
    assert engine.failed == {
        "b-same-name.onnx": "model name lsrcnn-lite-x2 is already served by a.onnx",
        "c-no-preset.onnx": "no 'preset' in its metadata"}


def test_files_without_a_scale_are_skipped(tmp_path: Path) -> None:
    proto = onnx.load(str(WEIGHTS / "lsrcnn-lite-x2.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "anonymous.onnx"))
    engine = Engine(Settings(model_dir=tmp_path))
    with pytest.raises(EngineError, match="no model for the default scale x2"):
        engine.load()
    assert engine.failed == {"anonymous.onnx": "no 'scale' in its metadata"}


def test_bad_output_shape_is_an_engine_error() -> None:
    engine = Engine(Settings())
    engine.load()
    engine.runners["lsrcnn-lite-x4"] = engine.runners["lsrcnn-lite-x2"]  # x2 posing as x4
    with pytest.raises(EngineError, match="returned"):
        engine.run("lsrcnn-lite-x4", np.zeros((1, 1, 8, 8), np.float32))


# -- the device, from what a session reports active ---------------------------------------


def test_gpu_listed_but_not_active_serves_lite_on_the_cpu_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _two_presets(tmp_path)
    asked = fake_providers(monkeypatch, [CUDA, CPU], [CPU])
    settings = Settings(model_dir=tmp_path)
    engine = Engine(settings)
    with caplog.at_level(logging.WARNING, logger="app.runtime.device"):
        engine.load()
    assert not engine.on_gpu
    assert engine.model_for(2) == "lsrcnn-lite-x2"  # auto: lite, as on any CPU
    assert {info.provider for info in engine.models.values()} == {CPU}
    assert any("CUDA is listed as available but a session runs on CPUExecutionProvider"
               in r.getMessage() for r in caplog.records)
    sessions = [(p, opts) for p, opts in asked if opts is not None]  # the models'
    probes = [p for p, opts in asked if opts is None and p != [CPU]]
    assert probes == [[(CUDA, cuda_options(settings)), CPU]]  # one probe asked for CUDA
    assert [p for p, _ in sessions] == [[CPU], [CPU]]  # the models did not
    threads = settings.resolved_threads(on_gpu=False)
    assert all(opts.intra_op_num_threads == threads for _, opts in sessions)


def test_required_gpu_not_active_fails_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_providers(monkeypatch, [CUDA, CPU], [CPU])
    with pytest.raises(EngineError, match="CUDA required but CUDA is listed"):
        Engine(Settings(providers="cuda")).load()


def test_required_gpu_on_a_cpu_build_fails_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_providers(monkeypatch, [CPU], [CPU])
    with pytest.raises(EngineError, match="CUDA required but this ONNX Runtime build"):
        Engine(Settings(providers="cuda")).load()


def _warmed_batches(settings: Settings) -> tuple[Upscaler, dict[str, set[int]]]:
    """Start an Upscaler (it must get ready) and record the batch sizes each model was
    called with."""
    up = Upscaler(settings, Metrics())
    seen: dict[str, set[int]] = {}
    run = up.engine.run

    def recording(name: str, x: np.ndarray) -> np.ndarray:
        seen.setdefault(name, set()).add(len(x))
        return run(name, x)

    up.engine.run = recording  # type: ignore[method-assign]

    async def main() -> None:
        await up.start()
        assert up.ready, up.reason
        await up.stop()

    asyncio.run(main())
    return up, seen


def test_active_gpu_takes_the_gpu_policy_and_warms_every_batch_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _two_presets(tmp_path)
    asked = fake_providers(monkeypatch, [CUDA, CPU], [CUDA, CPU])
    settings = Settings(model_dir=tmp_path, tile_size=16, tile_overlap=0)
    up, seen = _warmed_batches(settings)
    engine = up.engine
    assert engine.on_gpu
    assert engine.model_for(2) == "lsrcnn-x2"  # auto: the full network on a GPU
    sessions = [(p, opts) for p, opts in asked if opts is not None]
    assert [p for p, _ in sessions] == [[(CUDA, cuda_options(settings)), CPU]] * 2
    threads = settings.resolved_threads(on_gpu=True)
    assert all(opts.intra_op_num_threads == threads for _, opts in sessions)
    assert settings.batch_sizes(True) == (1, 2, 4, 8)
    assert seen == {"lsrcnn-lite-x2": {1, 2, 4, 8}, "lsrcnn-x2": {1, 2, 4, 8}}
    assert up.bound() == 32  # tile sides rounded to the GPU's multiple


def test_cpu_warms_the_largest_batch(tmp_path: Path) -> None:
    shutil.copy(WEIGHTS / "lsrcnn-lite-x2.onnx", tmp_path)
    up, seen = _warmed_batches(Settings(model_dir=tmp_path, providers="cpu", max_batch_size=3,
                                        tile_size=16, tile_overlap=0))
    assert not up.engine.on_gpu
    assert seen == {"lsrcnn-lite-x2": {3, 1}}  # 3 for the arena, 1 for the cost samples


class FailsWarmUp(Engine):
    def warm_up(self, name: str, *args: object) -> list[tuple[int, int, float]]:
        if name == "lsrcnn-lite-x3":
            raise RuntimeError("out of memory")
        return super().warm_up(name, *args)  # type: ignore[arg-type]


def test_a_model_that_fails_warm_up_costs_only_itself(tmp_path: Path) -> None:
    for scale in (2, 3):
        shutil.copy(WEIGHTS / f"lsrcnn-lite-x{scale}.onnx", tmp_path)
    settings = Settings(model_dir=tmp_path, tile_size=16, tile_overlap=0)
    up = Upscaler(settings, Metrics(), FailsWarmUp(settings))

    async def main() -> None:
        await up.start()
        assert up.model_ready("lsrcnn-lite-x2") and not up.model_ready("lsrcnn-lite-x3")
        await up.stop()

    asyncio.run(main())
    assert up.models == ["lsrcnn-lite-x2"] and up.scales == [2]
    assert up.engine.failed == {"lsrcnn-lite-x3.onnx": "warm-up failed: out of memory"}
