"""The quality gate of every precision, at build time: `python -m model.precisions Set5/ Set14/
[--write]`.

Each bundled model (model/weights/*.onnx) is evaluated on the given folders in fp32 (ONNX
Runtime, the reference) and in bf16 (OpenVINO, as the service runs it), on its own kind's
input: clean bicubic LR for clean models, JPEG q75 for photo models. Prints a table with
the loss against fp32; `--write` records it in the file's card, as the `precisions` key
(JSON), weights untouched. Needs OpenVINO and a CPU with bf16 instructions; the target is
a loss of at most MAX_LOSS_DB on every set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx

from model import contract
from model.degrade import parse_chain
from model.evaluate import evaluate_folder, open_model

WEIGHTS = Path(__file__).resolve().parent / "weights"
MAX_LOSS_DB = 0.05
CONDITION = {contract.CLEAN: "clean", contract.PHOTO: "jpeg:75"}


def measure(path: Path, folders: list[str]) -> dict:
    """{"lr": condition, "fp32": {set: dB}, "bf16": {set: dB}, "bf16_loss_db": {set: dB}}."""
    proto = onnx.load(str(path), load_external_data=False)
    desc = contract.describe({p.key: p.value for p in proto.metadata_props})
    chain = parse_chain(CONDITION[desc.kind])
    models = {p: open_model(path, p) for p in ("fp32", "bf16")}
    out: dict = {"lr": chain.name, "fp32": {}, "bf16": {}, "bf16_loss_db": {}}
    for folder in folders:
        scores = {s.method: s for s in evaluate_folder(folder, desc.scale, models, chain)}
        name = Path(folder).name
        for p in ("fp32", "bf16"):
            out[p][name] = round(scores[p].psnr, 3)
        out["bf16_loss_db"][name] = round(scores["fp32"].psnr - scores["bf16"].psnr, 3)
    return out


def write(path: Path, record: dict) -> None:
    """Set the card's `precisions` key; every other key and every weight stays."""
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta["precisions"] = json.dumps(record, sort_keys=True)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("folders", nargs="+", help="folders of HR images (Set5, Set14)")
    p.add_argument("--models", nargs="*", default=None, help="ONNX files (default: bundled)")
    p.add_argument("--write", action="store_true", help="record the figures in each card")
    args = p.parse_args(argv)
    paths = [Path(m) for m in args.models] if args.models else sorted(WEIGHTS.glob("*.onnx"))
    sets = [Path(f).name for f in args.folders]
    print("| model | LR | " + " | ".join(f"{s} fp32 / bf16 (loss)" for s in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    worst = 0.0
    for path in paths:
        record = measure(path, args.folders)
        worst = max(worst, *record["bf16_loss_db"].values())
        print(f"| {path.stem} | {record['lr']} | " + " | ".join(
            f"{record['fp32'][s]:.3f} / {record['bf16'][s]:.3f} ({record['bf16_loss_db'][s]:+.3f})"
            for s in sets) + " |", flush=True)
        if args.write:
            write(path, record)
    print(f"\nlargest bf16 loss: {worst:.3f} dB (target <= {MAX_LOSS_DB} dB)")


if __name__ == "__main__":
    main()
