"""The README's picture: an input beside bicubic and the service's x2 and x4 outputs.

    python -m bench.figure [--image tests/data/Set5/butterfly.png] [--out docs/figure.png]

The input is the HR crop downscaled by 4 (the protocol's bicubic); every panel is shown at
the x4 size (the input and x2 panels with nearest-neighbour enlargement, so what you see is
what each method made).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from app.images.pipeline import upscale_direct
from app.runtime.engine import Engine
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def upscale(engine: Engine, settings: Settings, img: Image.Image, scale: int) -> Image.Image:
    """The service's own path (tiles, model, colour), as the service would answer it."""
    name = engine.model_for(scale)
    if name is None:
        raise SystemExit(f"no x{scale} model")
    return upscale_direct(engine, img, name, settings)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image", default=str(ROOT / "tests/data/Set5/butterfly.png"))
    p.add_argument("--box", type=int, nargs=4, default=[40, 60, 200, 180])
    p.add_argument("--out", default=str(ROOT / "docs/figure.png"))
    args = p.parse_args()

    settings = Settings()
    engine = Engine(settings)
    engine.load()
    hr = Image.open(args.image).convert("RGB").crop(tuple(args.box))
    w, h = hr.size[0] // 4 * 4, hr.size[1] // 4 * 4
    hr = hr.crop((0, 0, w, h))
    lr = hr.resize((w // 4, h // 4), Image.BICUBIC)
    panels = [
        ("input (LR, shown 4x)", lr.resize((w, h), Image.NEAREST)),
        ("bicubic x4", lr.resize((w, h), Image.BICUBIC)),
        ("LSRCNN x2 (shown 2x)", upscale(engine, settings, lr, 2).resize((w, h), Image.NEAREST)),
        ("LSRCNN x4", upscale(engine, settings, lr, 4)),
        ("original", hr),
    ]
    pad, label = 6, 18
    sheet = Image.new("RGB", (len(panels) * (w + pad) + pad, h + label + 2 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (name, img) in enumerate(panels):
        x = pad + k * (w + pad)
        sheet.paste(img, (x, pad + label))
        draw.text((x, pad), name, fill=(0, 0, 0))
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.size[0]}x{sheet.size[1]}), mean |x4 - original| = "
          f"{np.abs(np.asarray(panels[3][1], float) - np.asarray(hr, float)).mean():.2f}")


if __name__ == "__main__":
    main()
