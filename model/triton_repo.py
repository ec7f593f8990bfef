"""Write a Triton model repository from the ONNX models:
`python -m model.triton_repo OUT_DIR [--model-dir DIR] [--device cpu|gpu]`.

For each model, OUT_DIR/<preset>-x<scale>/1/model.onnx and OUT_DIR/<preset>-x<scale>/config.pbtxt.
Names, datatypes and shapes come from the ONNX file, the scale and preset from its metadata
(never from the file name), and the batching from the service's settings (LSRCNN_* variables
apply): the preferred batch is LSRCNN_MAX_BATCH_SIZE tiles, the queue delay
LSRCNN_MAX_WAIT_MS, the queue bound and timeout LSRCNN_QUEUE_LIMIT and
LSRCNN_REQUEST_TIMEOUT_S, the warm-up shape one LSRCNN_TILE_SIZE tile. Needs onnxruntime,
not torch, so it runs where the service is installed.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from app.settings import Settings
from model import contract

# ONNX Runtime's type strings -> Triton's DataType names.
DATA_TYPES = {
    "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16",
    "tensor(bfloat16)": "TYPE_BF16", "tensor(double)": "TYPE_FP64",
    "tensor(int8)": "TYPE_INT8", "tensor(int16)": "TYPE_INT16", "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64", "tensor(uint8)": "TYPE_UINT8", "tensor(bool)": "TYPE_BOOL",
}
# A client may send several tiles in one request; Triton refuses requests over this.
MAX_BATCH_SIZE = 16


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]  # without the batch dimension; -1 where dynamic


@dataclass(frozen=True)
class OnnxModel:
    path: Path
    scale: int
    preset: str
    name: str  # the contract's, as the service names it: the same client code reaches both
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def _tensor(arg: ort.NodeArg) -> Tensor:
    if arg.type not in DATA_TYPES:
        raise ValueError(f"tensor {arg.name}: no Triton datatype for {arg.type}")
    # The first dimension is the batch, which Triton handles through max_batch_size.
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape[1:])
    return Tensor(arg.name, DATA_TYPES[arg.type], dims)


def read_model(path: str | Path) -> OnnxModel:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        described = contract.describe(session.get_modelmeta().custom_metadata_map)
    except contract.ContractError as err:
        raise ValueError(f"{path}: {err}") from None
    return OnnxModel(Path(path), described.scale, described.preset, described.name,
                     tuple(_tensor(a) for a in session.get_inputs()),
                     tuple(_tensor(a) for a in session.get_outputs()))


def _tensors(key: str, tensors: tuple[Tensor, ...]) -> str:
    items = ",\n".join(
        f"  {{\n    name: {json.dumps(t.name)}\n    data_type: {t.data_type}\n"
        f"    dims: [ {', '.join(map(str, t.dims))} ]\n  }}" for t in tensors)
    return f"{key} [\n{items}\n]\n"


def _warmup(tensor: Tensor, dims: list[int], batches: list[int]) -> str:
    """As the service does: runs at the tile shape, so that first requests are not slow."""
    items = ",\n".join(
        f"  {{\n    name: \"tile_batch_{n}\"\n    batch_size: {n}\n    inputs {{\n"
        f"      key: {json.dumps(tensor.name)}\n"
        f"      value {{\n        data_type: {tensor.data_type}\n"
        f"        dims: [ {', '.join(map(str, dims))} ]\n        zero_data: true\n      }}\n"
        "    }\n  }" for n in batches)
    return f"model_warmup [\n{items}\n]\n"


# The service batches what is already waiting and never holds a tile back; Triton gathers
# concurrent requests only within a delay, kept small against a tile's 20-200 ms.
QUEUE_DELAY_US = 2000


def config_text(model: OnnxModel, settings: Settings, device: str = "cpu", instances: int = 1,
                max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for one model."""
    preferred = min(settings.resolved_batch(device == "gpu"), max_batch_size)
    first = model.inputs[0]
    side = settings.tile_size + 2 * settings.tile_overlap  # the service's largest tile
    tile = [side if d == -1 else d for d in first.dims]
    return (
        f"name: {json.dumps(model.name)}\n"
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch_size}\n"
        + _tensors("input", model.inputs)
        + _tensors("output", model.outputs)
        + "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n"
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {round(settings.request_timeout_s * 1e6)}\n"
        # Triton counts requests here, the service tiles: the same where a request is a tile.
        f"    max_queue_size: {settings.queue_limit}\n"
        "  }\n"
        "}\n"
        "instance_group [\n"
        f"  {{\n    count: {instances}\n    kind: {'KIND_GPU' if device == 'gpu' else 'KIND_CPU'}\n"
        "  }\n]\n"
        + _warmup(first, tile, sorted({1, preferred}))
        # The contract, for clients that must not guess the scale from the model's name.
        + "".join(f"parameters {{\n  key: \"lsrcnn_{k}\"\n"
                  f"  value {{ string_value: {json.dumps(str(v))} }}\n}}\n"
                  for k, v in (("scale", model.scale), ("preset", model.preset)))
    )


def write_repository(out_dir: str | Path, model_dir: str | Path, settings: Settings,
                     device: str = "cpu", instances: int = 1,
                     max_batch_size: int = MAX_BATCH_SIZE) -> list[Path]:
    """Write every ONNX model of model_dir into out_dir; returns the model folders."""
    models = [read_model(p) for p in sorted(Path(model_dir).glob("*.onnx"))]
    if not models:
        raise FileNotFoundError(f"no *.onnx in {model_dir}")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"two files give one model name: {names}")
    written = []
    for model in models:
        folder = Path(out_dir) / model.name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.path, folder / "1" / "model.onnx")
        (folder / "config.pbtxt").write_text(
            config_text(model, settings, device, instances, max_batch_size))
        written.append(folder)
    return written


def main(argv: list[str] | None = None) -> None:
    settings = Settings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--model-dir", default=str(settings.model_dir),
                   help="folder of *.onnx models (default: LSRCNN_MODEL_DIR or the bundled ones)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="instance kind Triton runs the models on")
    p.add_argument("--instances", type=int, default=1, help="model instances per device")
    p.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE,
                   help="largest batch one request may carry")
    args = p.parse_args(argv)
    for folder in write_repository(args.out_dir, args.model_dir, settings, args.device,
                                   args.instances, args.max_batch_size):
        print(f"wrote {folder}")


if __name__ == "__main__":
    main()
