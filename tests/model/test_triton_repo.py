"""The Triton model repository: configs that Triton's own ModelConfig protobuf parses, with
names, datatypes and shapes that match the ONNX files, and no torch on the way."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from app.settings import Settings
from model import contract
from model.triton_repo import QUEUE_DELAY_US, main, write_repository

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "model" / "weights"
# Read with the onnx package, independently of the exporter's onnxruntime.
ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def parse(folder: Path) -> mc.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def onnx_dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1
            for d in value.type.tensor_type.shape.dim]


def check_tensors(declared, graph_values) -> None:
    assert [t.name for t in declared] == [v.name for v in graph_values]
    for t, v in zip(declared, graph_values, strict=True):
        assert mc.DataType.Name(t.data_type) == ONNX_TYPES[v.type.tensor_type.elem_type]
        dims = onnx_dims(v)
        assert dims[0] == -1, "the ONNX batch dimension is dynamic"
        assert list(t.dims) == dims[1:]


def test_configs_match_the_onnx_files(tmp_path: Path) -> None:
    settings = Settings()
    folders = write_repository(tmp_path, WEIGHTS, settings)
    assert len(folders) == len(list(WEIGHTS.glob("*.onnx")))
    for folder in folders:
        config = parse(folder)
        model_file = folder / "1" / "model.onnx"
        proto = onnx.load(str(model_file))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert config.name == folder.name == contract.describe(meta).name
        assert config.backend == "onnxruntime"
        check_tensors(config.input, proto.graph.input)
        check_tensors(config.output, proto.graph.output)
        assert list(config.input[0].dims) == [1, -1, -1]
        batching = config.dynamic_batching
        assert list(batching.preferred_batch_size) == [settings.resolved_batch(False)]
        assert batching.max_queue_delay_microseconds == QUEUE_DELAY_US
        assert config.max_batch_size >= settings.max_batch_size
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert config.parameters["lsrcnn_scale"].string_value == meta["scale"]
        warm = config.model_warmup[0].inputs[config.input[0].name]
        side = settings.tile_size + 2 * settings.tile_overlap
        assert list(warm.dims) == [1, side, side]


def test_declared_shapes_hold_at_run_time(tmp_path: Path) -> None:
    # Run each written model at a batch and size unlike any in the config: the dynamic dims
    # are really dynamic, and the output is scale times the input.
    for folder in write_repository(tmp_path, WEIGHTS, Settings()):
        config = parse(folder)
        session = ort.InferenceSession(str(folder / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        scale = int(config.parameters["lsrcnn_scale"].string_value)
        x = np.zeros((3, 1, 19, 26), np.float32)
        (y,) = session.run([config.output[0].name], {config.input[0].name: x})
        assert y.shape == (3, 1, 19 * scale, 26 * scale)


def test_cli_reads_the_service_settings(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSRCNN_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("LSRCNN_TILE_SIZE", "96")
    monkeypatch.setenv("LSRCNN_TILE_OVERLAP", "4")
    main([str(tmp_path), "--model-dir", str(WEIGHTS), "--device", "gpu", "--instances", "2"])
    for folder in sorted(tmp_path.iterdir()):
        config = parse(folder)
        assert list(config.dynamic_batching.preferred_batch_size) == [8]
        (group,) = config.instance_group
        assert (group.kind, group.count) == (mc.ModelInstanceGroup.KIND_GPU, 2)
        assert [w.batch_size for w in config.model_warmup] == [1, 8]
        assert list(config.model_warmup[0].inputs["input"].dims) == [1, 104, 104]


def test_refuses_two_files_of_one_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    source = sorted(WEIGHTS.glob("*.onnx"))[0]
    shutil.copy(source, models / "a.onnx")
    shutil.copy(source, models / "b.onnx")
    with pytest.raises(ValueError, match="one model name"):
        write_repository(tmp_path / "out", models, Settings())


def test_needs_no_torch(tmp_path: Path) -> None:
    code = ("import sys; from model.triton_repo import main; main([sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSRCNN_")}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == len(list(WEIGHTS.glob("*.onnx")))
    assert all(re.fullmatch(r"lsrcnn(-lite)?(-photo(-mild|-medium|-strong)?)?-x[234]", n)
               for n in names), names
