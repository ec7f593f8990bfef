"""Speed of both presets under ONNX Runtime on this machine's CPU (needs the train extra).

    python -m bench.presets [--sizes 64 256] [--repeats 5]

Speed does not depend on the weights, so each preset is exported fresh (random init) at
x2; reports seconds per single-image call, median of the repeats, and LR megapixels/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model import contract
from model.export import export
from model.net import LSRCNN, PRESETS, count_parameters, macs_per_lr_pixel, make_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hidden", type=int, nargs="*", default=[16, 48, 64],
                   help="also time lite-shaped variants with these LSTM sizes")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; onnxruntime "
          f"{ort.__version__}, CPUExecutionProvider, all cores\n")
    print("| preset | parameters | MACs / LR px | LR input | s per call | LR MP/s |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        variants = [(preset, None) for preset in sorted(PRESETS, reverse=True)]
        variants += [("lsrcnn-lite", h) for h in args.hidden]
        for preset, hidden in variants:
            model = LSRCNN(make_config(preset, 2, hidden=hidden)).eval()
            name = preset if hidden is None else f"lite, hidden {hidden}"
            path = Path(tmp) / f"{preset}-{hidden}.onnx"
            export(model, path, contract.ModelDescriptor(2, preset).metadata())
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for size in args.sizes:
                x = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
                sess.run(None, {contract.INPUT_NAME: x})
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    sess.run(None, {contract.INPUT_NAME: x})
                    times.append(time.perf_counter() - t0)
                med = statistics.median(times)
                print(f"| {name} | {count_parameters(model):,} | "
                      f"{macs_per_lr_pixel(model.cfg):,} | {size}x{size} | {med:.3f} | "
                      f"{size * size / med / 1e6:.3f} |", flush=True)


if __name__ == "__main__":
    main()
