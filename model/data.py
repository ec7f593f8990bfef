"""Training pairs: random aligned LR/HR Y crops from folders of HR images, flipped and rotated.

LR is made once per image by the evaluation protocol (modcrop, antialiased bicubic downscale
of the 8-bit RGB), so training sees exactly what evaluation and the service will see.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.contract import to_model
from model.imaging import bicubic_down, list_images, load_rgb, modcrop, y_of

log = logging.getLogger(__name__)


def _pad_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mirror-pad an HxWx3 array up to at least height x width."""
    ph, pw = max(0, height - img.shape[0]), max(0, width - img.shape[1])
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="symmetric")


class PatchSampler:
    """Holds every training image's LR/HR Y planes in memory and draws random batches."""

    def __init__(self, folders: Sequence[str | Path], scale: int, patch: int,
                 seed: int = 0) -> None:
        from PIL import Image

        self.scale, self.patch = scale, patch
        self.rng = np.random.default_rng(seed)
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        hr_side = patch * scale
        padded = 0
        for folder in folders:
            for path in list_images(folder):
                rgb = np.asarray(load_rgb(path))
                if rgb.shape[0] < hr_side or rgb.shape[1] < hr_side:
                    # Smaller than one crop: mirror-pad the HR first, so LR still derives from it.
                    rgb, padded = _pad_to(rgb, hr_side, hr_side), padded + 1
                hr = modcrop(Image.fromarray(rgb), scale)
                lr = bicubic_down(hr, scale)
                self.pairs.append(
                    (to_model(y_of(lr)), to_model(y_of(hr)))
                )
        if padded:
            log.warning("%d image(s) smaller than a %dpx crop were mirror-padded", padded, hr_side)
        # Draw images in proportion to their area so big images are not under-sampled.
        areas = np.array([lr.size for lr, _ in self.pairs], dtype=np.float64)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        p, s = self.patch, self.scale
        lrs = np.empty((size, 1, p, p), np.float32)
        hrs = np.empty((size, 1, p * s, p * s), np.float32)
        for k, i in enumerate(self.rng.choice(len(self.pairs), size=size, p=self.weights)):
            lr, hr = self.pairs[i]
            y = int(self.rng.integers(0, lr.shape[0] - p + 1))
            x = int(self.rng.integers(0, lr.shape[1] - p + 1))
            lr_c = lr[y : y + p, x : x + p]
            hr_c = hr[y * s : (y + p) * s, x * s : (x + p) * s]
            rot, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            lr_c, hr_c = np.rot90(lr_c, rot), np.rot90(hr_c, rot)
            if flip:
                lr_c, hr_c = lr_c[:, ::-1], hr_c[:, ::-1]
            lrs[k, 0], hrs[k, 0] = lr_c, hr_c
        return lrs, hrs
