"""Evaluate by the standard SR protocol: `python -m model.evaluate HR_DIR [HR_DIR ...] --scale 2
--model a.onnx [b.onnx ...] [--degrade clean jpeg:75 noise:5,jpeg:75] [--json results.json]`.

Rows: bicubic (Pillow) and each ONNX model; columns: PSNR / SSIM on BT.601 Y with a border of
`scale` pixels shaved. `--degrade` makes the LR as a photo is made (`model.degrade`: blur:S
before the bicubic downscale, then noise:S in 8-bit levels, then jpeg:Q by Pillow at 4:2:0),
one table per degradation; the HR stays clean. `--precision fp32 bf16` adds each model run
in bf16 by OpenVINO, as the service runs it. Prints markdown; writes JSON when asked.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from model import contract
from model.degrade import Chain, parse_chain
from model.imaging import bicubic_up, list_images, load_rgb, modcrop, y_of
from model.quality import psnr, quantize, ssim


@dataclass
class Score:
    method: str
    dataset: str
    scale: int
    psnr: float
    ssim: float
    images: int
    degrade: str = "clean"


def onnx_scale(session: ort.InferenceSession) -> int:
    return contract.describe(session.get_modelmeta().custom_metadata_map).scale


def run_onnx(model: object, lr_y: np.ndarray) -> np.ndarray:
    """One whole Y plane (0..255 scale) through the model (an ONNX Runtime session, or any
    runner of the service's: `run(x)`); float64 Y out."""
    x = contract.to_model(lr_y)[None, None]
    if isinstance(model, ort.InferenceSession):
        out = model.run(None, {contract.INPUT_NAME: x})[0]
    else:
        out = model.run(x)  # type: ignore[attr-defined]
    return contract.from_model(out[0, 0].astype(np.float64))


def open_model(path: str | Path, precision: str = "fp32") -> object:
    """fp32: ONNX Runtime, as the protocol's reference; bf16: OpenVINO, as the service runs
    it on a CPU with bf16 instructions (one stream, all threads)."""
    if precision == "fp32":
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from app.runtime.runners import OpenVinoRunner

    runner = OpenVinoRunner(Path(path), precision, streams=1, threads=os.cpu_count() or 1)
    if runner.precision != precision:
        raise SystemExit(f"OpenVINO runs {runner.precision} here, not {precision}")
    return runner


def evaluate_folder(folder: str | Path, scale: int,
                    models: dict[str, object] | None = None,
                    chain: Chain | None = None) -> list[Score]:
    models = models or {}
    chain = chain or Chain()
    per: dict[str, list[tuple[float, float]]] = {"bicubic": [], **{m: [] for m in models}}
    for i, path in enumerate(list_images(folder)):
        hr = modcrop(load_rgb(path), scale)
        lr = Image.fromarray(chain.apply(np.asarray(hr), scale, i))
        hr_y = y_of(hr)
        outputs = {"bicubic": quantize(y_of(bicubic_up(lr, scale)))}
        for name, session in models.items():
            outputs[name] = quantize(run_onnx(session, y_of(lr)))
        for name, sr in outputs.items():
            per[name].append((psnr(sr, hr_y, scale), ssim(sr, hr_y, scale)))
    dataset = Path(folder).name
    return [Score(name, dataset, scale, float(np.mean([p for p, _ in v])),
                  float(np.mean([s for _, s in v])), len(v), chain.name)
            for name, v in per.items()]


def markdown(scores: list[Score]) -> str:
    datasets = list(dict.fromkeys(s.dataset for s in scores))
    methods = list(dict.fromkeys(s.method for s in scores))
    scale, degrade = scores[0].scale, scores[0].degrade
    lines = [f"| x{scale}, LR {degrade} | " + " | ".join(datasets) + " |",
             "|---|" + "---|" * len(datasets)]
    for m in methods:
        cells = []
        for d in datasets:
            hit = [s for s in scores if s.method == m and s.dataset == d]
            cells.append(f"{hit[0].psnr:.2f} / {hit[0].ssim:.4f}" if hit else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_degradation(scores: list[Score], dataset: str) -> str:
    """One dataset's scores with a row per degradation and a column per method, and each
    method's gain over bicubic in dB (the model cards' table)."""
    mine = [s for s in scores if s.dataset == dataset]
    rows = list(dict.fromkeys(s.degrade for s in mine))
    methods = list(dict.fromkeys(s.method for s in mine))
    models = [m for m in methods if m != "bicubic"]
    lines = [f"| {dataset} x{mine[0].scale}, LR | " + " | ".join(methods) + " | "
             + " | ".join(f"gain {m}" for m in models) + " |",
             "|---|" + "---|" * (len(methods) + len(models))]
    for row in rows:
        cell = {s.method: s for s in mine if s.degrade == row}
        lines.append(f"| {row} | " + " | ".join(
            f"{cell[m].psnr:.2f} / {cell[m].ssim:.4f}" for m in methods) + " | " + " | ".join(
            f"{cell[m].psnr - cell['bicubic'].psnr:+.2f}" for m in models) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("folders", nargs="+", help="folders of HR images (Set5, Set14, ...)")
    p.add_argument("--scale", type=int, default=2, choices=(2, 3, 4))
    p.add_argument("--model", nargs="*", default=[], help="ONNX files of this scale")
    p.add_argument("--degrade", nargs="*", default=["clean"],
                   help="LR degradations, one table each: clean, jpeg:75, noise:5,jpeg:75, "
                        "blur:1.0 (model.degrade.parse_chain)")
    p.add_argument("--precision", nargs="*", default=["fp32"], choices=("fp32", "bf16"),
                   help="fp32 (ONNX Runtime) and/or bf16 (OpenVINO): a row per model and "
                        "precision, bf16 rows named MODEL@bf16")
    p.add_argument("--json", default=None, help="also write the scores here")
    args = p.parse_args(argv)
    try:
        chains = [parse_chain(text) for text in args.degrade]
    except ValueError as err:
        p.error(str(err))
    models = {}
    for path in args.model:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        if onnx_scale(session) != args.scale:
            p.error(f"{path} is a x{onnx_scale(session)} model, not x{args.scale}")
        for precision in args.precision:
            name = Path(path).stem + ("" if precision == "fp32" else f"@{precision}")
            models[name] = session if precision == "fp32" else open_model(path, precision)
    scores = []
    for chain in chains:
        table = [s for folder in args.folders
                 for s in evaluate_folder(folder, args.scale, models, chain)]
        print(markdown(table) + "\n")
        scores += table
    if len(chains) > 1:
        for dataset in dict.fromkeys(s.dataset for s in scores):
            print(by_degradation(scores, dataset) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(s) for s in scores], indent=2) + "\n")


if __name__ == "__main__":
    main()
