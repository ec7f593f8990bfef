"""Export a checkpoint to ONNX: `python -m model.export CHECKPOINT OUT.onnx`.

Dynamic N, H and W; metadata that the service reads; a parity check against PyTorch at two
sizes unlike the export sample that fails loudly (exit 1) beyond the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from model import contract
from model.net import LSRCNN, count_parameters, macs_per_lr_pixel
from model.train import load_checkpoint, model_from_checkpoint

OPSET = 17
TOLERANCE = 1e-4
EXPORT_SAMPLE = (1, 1, 32, 32)
PARITY_SHAPES = ((2, 1, 23, 41), (1, 1, 57, 30))
ARCH = "lsrcnn"  # the network in model/net.py, as the metadata names it


class ParityError(RuntimeError):
    pass


def descriptor(model: LSRCNN, ckpt: dict) -> contract.ModelDescriptor:
    """What the file will state about itself, in the contract's terms."""
    train = ckpt.get("train", {})
    card = {
        "parameters": str(count_parameters(model)),
        "macs_per_lr_pixel": str(macs_per_lr_pixel(model.cfg)),
        "training_data": "+".join(train.get("data", [])) or "unknown",
        "iterations": str(ckpt.get("iteration", 0)),
        "validation_set": str(train.get("val") or ""),
        "validation_psnr": f"{ckpt.get('val_psnr', float('nan')):.3f}",
    }
    if train.get("val_degrade", "clean") != "clean":
        card["validation_set"] += f" ({train['val_degrade']})"
    if train.get("degradations"):
        card["degradations"] = json.dumps(train["degradations"], sort_keys=True)
    if train.get("recipe"):
        card["recipe"] = f"model/recipes/{train['recipe']}"
    kind = train.get("kind", contract.CLEAN)
    return contract.ModelDescriptor(model.cfg.scale, model.cfg.preset, ARCH, card, kind,
                                    train.get("strength", ""))


def metadata(model: LSRCNN, ckpt: dict) -> dict[str, str]:
    """metadata_props of the exported file: the descriptor plus the network config."""
    return {**descriptor(model, ckpt).metadata(),
            contract.CONFIG: json.dumps(model.cfg.to_dict())}


def export(model: LSRCNN, path: str | Path, meta: dict[str, str]) -> None:
    model = model.eval().cpu()
    sample = torch.rand(*EXPORT_SAMPLE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter keeps LSTM sequence lengths dynamic; dynamo fixes them.
        torch.onnx.export(
            model, (sample,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[contract.INPUT_NAME], output_names=[contract.OUTPUT_NAME],
            dynamic_axes={contract.INPUT_NAME: contract.INPUT_AXES,
                          contract.OUTPUT_NAME: contract.OUTPUT_AXES},
        )
    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def parity(model: LSRCNN, path: str | Path, shapes=PARITY_SHAPES) -> float:
    """Largest |ORT - torch| over the given input shapes; raises ParityError past TOLERANCE."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.rand(*shape, generator=gen)
        with torch.no_grad():
            ref = model.eval()(x).numpy()
        got = session.run(None, {contract.INPUT_NAME: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ParityError(f"shape {shape}: ONNX gave {got.shape}, torch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    if worst > TOLERANCE:
        raise ParityError(f"ONNX differs from torch by {worst:.2e} > {TOLERANCE:.0e}")
    return worst


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("out")
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    export(model, args.out, metadata(model, ckpt))
    try:
        worst = parity(model, args.out)
    except ParityError as err:
        Path(args.out).unlink(missing_ok=True)
        sys.exit(f"parity check FAILED, {args.out} removed: {err}")
    print(f"wrote {args.out}: x{model.cfg.scale} {model.cfg.preset}, "
          f"parity max |diff| {worst:.2e} at {[s[2:] for s in PARITY_SHAPES]}")


if __name__ == "__main__":
    main()
