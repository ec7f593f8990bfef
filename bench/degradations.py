"""How hard each training degradation hits, at the ends of its range: the PSNR (on Y) of the
degraded LR against the clean bicubic LR, over a folder of HR images (default: Set5).

    python -m bench.degradations [--images tests/data/Set5] [--scale 2]

The ranges of `model.degrade.Degradations` are chosen from this table: from barely visible
to about as bad as the photos people upload get, one step at a time (first order).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from model import degrade
from model.contract import rgb_to_y
from model.imaging import list_images, load_rgb, modcrop

ROOT = Path(__file__).resolve().parent.parent


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    ya, yb = rgb_to_y(a, np.float64), rgb_to_y(b, np.float64)
    mse = float(np.mean((ya - yb) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", default=str(ROOT / "tests/data/Set5"))
    p.add_argument("--scale", type=int, default=2)
    args = p.parse_args()
    s, d = args.scale, degrade.Degradations()
    rng = np.random.default_rng(0)
    steps = {
        f"blur sigma {d.blur_sigma[0]} (HR), then bicubic":
            lambda hr: degrade.downscale(degrade.blur(hr, degrade.gaussian_kernel(
                d.blur_sigma[0])), s),
        f"blur sigma {d.blur_sigma[1]} (HR), then bicubic":
            lambda hr: degrade.downscale(degrade.blur(hr, degrade.gaussian_kernel(
                d.blur_sigma[1])), s),
        "bilinear instead of bicubic": lambda hr: degrade.downscale(hr, s, "bilinear"),
        "area instead of bicubic": lambda hr: degrade.downscale(hr, s, "area"),
        **{f"Gaussian noise sigma {v:g}": (lambda hr, v=v: degrade.add_noise(
            degrade.downscale(hr, s), v, rng)) for v in (d.noise_sigma[0], 5.0,
                                                         d.noise_sigma[1])},
        f"Poisson-like noise sigma {d.noise_sigma[1]:g} at white":
            lambda hr: degrade.add_noise(degrade.downscale(hr, s), d.noise_sigma[1], rng,
                                         poisson=True),
        **{f"JPEG q{q} 4:2:0": (lambda hr, q=q: degrade.jpeg(degrade.downscale(hr, s), q))
           for q in (d.jpeg_quality[1], 90, 75, 50, d.jpeg_quality[0])},
    }
    images = [np.asarray(modcrop(load_rgb(path), s)) for path in list_images(args.images)]
    name = Path(args.images).name
    print(f"| {name} x{s}: the step alone | PSNR of the LR vs the clean LR (dB) |")
    print("|---|---|")
    for what, step in steps.items():
        scores = [psnr(step(hr), degrade.downscale(hr, s)) for hr in images]
        print(f"| {what} | {np.mean(scores):.2f} |")


if __name__ == "__main__":
    main()
