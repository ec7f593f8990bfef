"""Training pairs: random aligned LR/HR Y crops from folders of HR images, flipped and rotated.

Each HR crop is kept as 8-bit RGB, and its LR is made from it on the fly by a degradation
chain drawn for that patch (`model.degrade`): the clean distribution is the evaluation
protocol's antialiased bicubic downscale, the photo one adds blur, other kernels, noise and
JPEG. The luma is taken after the degradation, as the service takes it from a real file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.contract import rgb_to_y, to_model
from model.degrade import PRESETS, Degradations
from model.imaging import list_images, load_rgb

log = logging.getLogger(__name__)


def _pad_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mirror-pad an HxWx3 array up to at least height x width."""
    ph, pw = max(0, height - img.shape[0]), max(0, width - img.shape[1])
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="symmetric")


class PatchSampler:
    """Holds every training image's 8-bit RGB in memory and draws random degraded batches."""

    def __init__(self, folders: Sequence[str | Path], scale: int, patch: int,
                 seed: int = 0, degradations: Degradations | None = None) -> None:
        self.scale, self.patch = scale, patch
        self.degradations = degradations or PRESETS["clean"]
        self.rng = np.random.default_rng(seed)
        self.images: list[np.ndarray] = []
        hr_side = patch * scale
        padded = 0
        for folder in folders:
            for path in list_images(folder):
                rgb = np.asarray(load_rgb(path))
                if rgb.shape[0] < hr_side or rgb.shape[1] < hr_side:
                    rgb, padded = _pad_to(rgb, hr_side, hr_side), padded + 1
                self.images.append(rgb)
        if padded:
            log.warning("%d image(s) smaller than a %dpx crop were mirror-padded", padded, hr_side)
        # Draw images in proportion to their area so big images are not under-sampled.
        areas = np.array([img.shape[0] * img.shape[1] for img in self.images], np.float64)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        p, s = self.patch, self.scale
        side = p * s
        lrs = np.empty((size, 1, p, p), np.float32)
        hrs = np.empty((size, 1, side, side), np.float32)
        for k, i in enumerate(self.rng.choice(len(self.images), size=size, p=self.weights)):
            img = self.images[i]
            y = int(self.rng.integers(0, img.shape[0] - side + 1))
            x = int(self.rng.integers(0, img.shape[1] - side + 1))
            hr = np.rot90(img[y:y + side, x:x + side], int(self.rng.integers(4)))
            if self.rng.integers(2):
                hr = hr[:, ::-1]
            hr = np.ascontiguousarray(hr)
            lr = self.degradations.sample(hr, s, self.rng)
            lrs[k, 0], hrs[k, 0] = to_model(rgb_to_y(lr)), to_model(rgb_to_y(hr))
        return lrs, hrs
