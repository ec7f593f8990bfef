"""The README's photo picture: a JPEG photo upscaled by bicubic, the clean model and the
photo model, beside the original.

    python -m bench.photo_figure [--image tests/data/Set5/baby.png] [--quality 50]
                                 [--scale 2] [--out docs/photo.png]

The input is the HR crop downscaled by the scale (bicubic), then saved as a JPEG at the
given quality by Pillow (4:2:0), the way a photo reaches the service. Each model runs
through the service's own path (tiles, colour). Every panel is shown at the output size and
enlarged 2x more with nearest-neighbour, so JPEG blocks and ringing stay visible.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from app.images.pipeline import upscale_direct
from app.runtime.engine import Engine
from app.runtime.upscaler import photo_strength
from app.settings import Settings
from model import contract
from model.contract import rgb_to_y

ROOT = Path(__file__).resolve().parent.parent


def psnr_y(a: Image.Image, b: Image.Image, border: int) -> float:
    ya, yb = (rgb_to_y(np.asarray(x), np.float64)[border:-border, border:-border]
              for x in (a, b))
    return float(10 * np.log10(255**2 / np.mean((ya - yb) ** 2)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image", default=str(ROOT / "tests/data/Set5/baby.png"))
    p.add_argument("--box", type=int, nargs=4, default=[232, 112, 352, 232])
    p.add_argument("--quality", type=int, default=50)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--zoom", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "docs/photo.png"))
    args = p.parse_args()

    settings = Settings()
    engine = Engine(settings)
    engine.load()
    s = args.scale
    # The photo model the service's Auto gives a JPEG of this quality.
    clean = engine.model_for(s)
    photo = engine.model_for(s, contract.PHOTO, photo_strength(settings, args.quality))
    if clean is None or photo is None:
        raise SystemExit(f"needs a clean and a photo x{s} model in {settings.model_dir}")
    hr = Image.open(args.image).convert("RGB").crop(tuple(args.box))
    w, h = hr.size[0] // s * s, hr.size[1] // s * s
    hr = hr.crop((0, 0, w, h))
    buf = io.BytesIO()
    hr.resize((w // s, h // s), Image.BICUBIC).save(buf, "JPEG", quality=args.quality)
    lr = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    outs = [
        (f"JPEG q{args.quality} input, bicubic x{s}", lr.resize((w, h), Image.BICUBIC)),
        (f"clean model ({clean})", upscale_direct(engine, lr, clean, settings)),
        (f"photo model ({photo})", upscale_direct(engine, lr, photo, settings)),
        ("original", hr),
    ]
    z, pad, label = args.zoom, 6, 30
    sheet = Image.new("RGB", (len(outs) * (w * z + pad) + pad, h * z + label + 2 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (name, img) in enumerate(outs):
        x = pad + k * (w * z + pad)
        sheet.paste(img.resize((w * z, h * z), Image.NEAREST), (x, pad + label))
        score = "" if img is hr else f"Y PSNR {psnr_y(img, hr, s):.2f} dB"
        draw.text((x, pad), name, fill=(0, 0, 0))
        draw.text((x, pad + 13), score, fill=(0, 0, 0))
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.size[0]}x{sheet.size[1]}): " + ", ".join(
        f"{name}: {psnr_y(img, hr, s):.2f} dB" for name, img in outs[:3]))


if __name__ == "__main__":
    main()
