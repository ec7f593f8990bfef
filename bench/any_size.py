"""Any output size, measured: `python -m bench.any_size Set5/ Set14/ [--factors 1.5 2.5]`.

For each fractional factor f: each HR image is cropped to a multiple of 2f's denominator,
downscaled by f with Pillow's bicubic (the LR), then brought back to the HR size by
- bicubic: Pillow's bicubic straight to the HR size (what a user could do without us);
- the service's way: the model at the next integer scale (the service's tiling and colour
  path, `upscale_direct`), then down to the HR size with Lanczos (`app.images.sizing`);
- the same with bicubic or box as the last step instead of Lanczos (why Lanczos).
PSNR / SSIM on BT.601 Y, a border of ceil(f) pixels shaved, as the SR protocol does.
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from app.images import sizing
from app.images.pipeline import upscale_direct
from app.runtime.engine import Engine
from app.settings import Settings
from model.imaging import list_images, load_rgb, y_of
from model.quality import psnr, quantize, ssim

LAST_STEPS = {"then Lanczos": sizing.resize,
              "then bicubic": lambda img, size: img.resize(size, Image.BICUBIC),
              "then box": lambda img, size: img.resize(size, Image.BOX)}


def pair(path: Path, factor: float) -> tuple[Image.Image, Image.Image]:
    """HR cropped so that HR / factor is whole, and its bicubic LR."""
    step = Fraction(factor).limit_denominator(8).numerator
    hr = load_rgb(path)
    w, h = hr.width - hr.width % step, hr.height - hr.height % step
    hr = hr.crop((0, 0, w, h))
    return hr, hr.resize((round(w / factor), round(h / factor)), Image.BICUBIC)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+")
    p.add_argument("--factors", type=float, nargs="+", default=[1.5, 2.5])
    args = p.parse_args()
    settings = Settings(engine="onnxruntime")
    engine = Engine(settings)
    engine.load()
    print("| set | x | bicubic | " + " | ".join(f"model, {k}" for k in LAST_STEPS)
          + " | gain (Lanczos) |")
    print("|---|---|---|" + "---|" * len(LAST_STEPS) + "---|")
    for folder in args.folders:
        for factor in args.factors:
            scale = sizing.model_scale(factor, engine.scales)
            name = engine.model_for(scale)
            assert name is not None
            shave = math.ceil(factor)
            rows: dict[str, list[tuple[float, float]]] = {"bicubic": [],
                                                          **{k: [] for k in LAST_STEPS}}
            for path in list_images(folder):
                hr, lr = pair(path, factor)
                want = y_of(hr)
                outs = {"bicubic": lr.resize(hr.size, Image.BICUBIC)}
                big = upscale_direct(engine, lr, name, settings)
                outs.update({k: step(big, hr.size) for k, step in LAST_STEPS.items()})
                for k, img in outs.items():
                    y = quantize(y_of(img))
                    rows[k].append((psnr(y, want, shave), ssim(y, want, shave)))
            mean = {k: (float(np.mean([a for a, _ in v])), float(np.mean([b for _, b in v])))
                    for k, v in rows.items()}
            print(f"| {Path(folder).name} | {factor:g} (x{scale} model) | " + " | ".join(
                f"{mean[k][0]:.2f} / {mean[k][1]:.4f}" for k in rows)
                + f" | {mean['then Lanczos'][0] - mean['bicubic'][0]:+.2f} dB |", flush=True)


if __name__ == "__main__":
    main()
