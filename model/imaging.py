"""The SR evaluation protocol's image steps (numpy + Pillow): modcrop, bicubic LR, BT.601 Y."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from model.contract import rgb_to_y

IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"}


def list_images(folder: str | Path) -> list[Path]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images in {folder}")
    return paths


def load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def modcrop(img: Image.Image, scale: int) -> Image.Image:
    """Crop bottom/right so both sides are multiples of the scale."""
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))


def bicubic_down(img: Image.Image, scale: int) -> Image.Image:
    """Antialiased bicubic downscale of the 8-bit RGB image (matches MATLAB imresize)."""
    w, h = img.size
    return img.resize((w // scale, h // scale), Image.BICUBIC)


def bicubic_up(img: Image.Image, scale: int) -> Image.Image:
    w, h = img.size
    return img.resize((w * scale, h * scale), Image.BICUBIC)


def y_of(img: Image.Image) -> np.ndarray:
    """The contract's BT.601 Y (0..255 scale) in float64, as published SR tables compute it."""
    return rgb_to_y(np.asarray(img.convert("RGB")), np.float64)


def lr_hr_pair(path: str | Path, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Y channels (float64, 0..255 scale) of the protocol's LR input and modcropped HR."""
    hr = modcrop(load_rgb(path), scale)
    return y_of(bicubic_down(hr, scale)), y_of(hr)
