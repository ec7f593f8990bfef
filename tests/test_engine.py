"""Engine: model discovery by metadata, preset choice, provider truth, output checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from app.engine import CPU, Engine, EngineError, cuda_available
from app.settings import Settings
from tests.conftest import WEIGHTS


def _copy_as(src: Path, dst: Path, **meta: str) -> None:
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(meta)
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(dst))


def test_scale_comes_from_metadata_not_the_file_name(tmp_path: Path) -> None:
    shutil.copy(WEIGHTS / "lsrcnn-lite-x3.onnx", tmp_path / "misleading-x2.onnx")
    engine = Engine(Settings(model_dir=tmp_path, default_scale=3))
    engine.load()
    assert engine.scales == [3]
    out = engine.run(3, np.zeros((2, 1, 10, 12), np.float32))
    assert out.shape == (2, 1, 30, 36)


def test_preset_setting_picks_among_files_of_one_scale(tmp_path: Path) -> None:
    src = WEIGHTS / "lsrcnn-lite-x2.onnx"
    shutil.copy(src, tmp_path / "a-lite.onnx")
    _copy_as(src, tmp_path / "b-full.onnx", preset="lsrcnn")
    auto = Engine(Settings(model_dir=tmp_path, providers="cpu"))
    auto.load()
    assert auto.models[2].preset == "lsrcnn-lite"  # the CPU default
    chosen = Engine(Settings(model_dir=tmp_path, preset="lsrcnn"))
    chosen.load()
    assert chosen.models[2].preset == "lsrcnn" and chosen.models[2].path.name == "b-full.onnx"


def test_files_without_a_scale_are_skipped(tmp_path: Path) -> None:
    proto = onnx.load(str(WEIGHTS / "lsrcnn-lite-x2.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "anonymous.onnx"))
    engine = Engine(Settings(model_dir=tmp_path))
    with pytest.raises(EngineError, match="no model for the default scale x2"):
        engine.load()
    assert engine.failed == {"anonymous.onnx": "no 'scale' in its metadata"}


def test_active_provider_is_reported_truthfully() -> None:
    engine = Engine(Settings())
    engine.load()
    providers = {info.provider for info in engine.models.values()}
    assert providers == ({"CUDAExecutionProvider"} if cuda_available() else {CPU})


@pytest.mark.skipif(cuda_available(), reason="checks the behaviour without a GPU")
def test_required_cuda_without_a_gpu_fails_the_load() -> None:
    with pytest.raises(EngineError, match="CUDA required"):
        Engine(Settings(providers="cuda")).load()


def test_bad_output_shape_is_an_engine_error() -> None:
    engine = Engine(Settings())
    engine.load()
    engine.sessions[4] = engine.sessions[2]  # a x2 model posing as x4
    with pytest.raises(EngineError, match="returned"):
        engine.run(4, np.zeros((1, 1, 8, 8), np.float32))
