"""Real-world degradations, made the way a photo is made: blur, downscale, noise, JPEG.

Training draws a random chain per patch (`Degradations.sample`, seeded by the caller's
generator); evaluation applies a fixed one (`parse_chain("noise:5,jpeg:75")`). Every step
works on 8-bit RGB, before the luma is taken, so JPEG's chroma subsampling and the noise's
colour reach Y the way they do in a real file.

First-order on purpose (one pass of each step, as BSRGAN's simplest shuffle, not
Real-ESRGAN's second round): the service's model is small, and the inputs it must serve are
mostly one JPEG save of a downscaled photo. The ranges are the defaults of `Degradations`
and are explained in the model card (`model/weights/README.md`).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

# Pillow's resampling filters for the downscale; every one is antialiased when reducing.
KERNELS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "area": Image.BOX}
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


# -- the steps ---------------------------------------------------------------------------


def gaussian_kernel(sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                    radius: int | None = None) -> np.ndarray:
    """A normalised 2-D Gaussian, anisotropic when sigma_y differs, rotated by theta."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    radius = radius if radius is not None else max(1, math.ceil(3 * max(sigma_x, sigma_y)))
    ax = np.arange(-radius, radius + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return k / k.sum()


def blur(rgb: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve 8-bit RGB with a small kernel (mirror edges); 8-bit RGB out."""
    r = kernel.shape[0] // 2
    src = np.pad(rgb.astype(np.float32), ((r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros(rgb.shape, np.float32)
    h, w = rgb.shape[:2]
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += np.float32(kernel[dy, dx]) * src[dy:dy + h, dx:dx + w]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def downscale(rgb: np.ndarray, scale: int, kernel: str = "bicubic") -> np.ndarray:
    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb).resize((w // scale, h // scale), KERNELS[kernel])
    return np.asarray(img)


def add_noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator, *,
              gray: bool = False, poisson: bool = False) -> np.ndarray:
    """Gaussian noise of `sigma` 8-bit levels; `poisson`: its variance grows with the signal
    (sigma at white), as a sensor's shot noise does; `gray`: the same on every channel."""
    shape = rgb.shape[:2] + ((1,) if gray else (3,))
    n = rng.standard_normal(shape).astype(np.float32) * np.float32(sigma)
    if poisson:
        level = rgb.astype(np.float32).mean(axis=2, keepdims=True) if gray else rgb
        n = n * np.sqrt(level.astype(np.float32) / 255.0)
    return np.clip(np.rint(rgb + n), 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=int(quality),
                              subsampling=SUBSAMPLING[subsampling])
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"))


# -- random chains for training ----------------------------------------------------------


@dataclass(frozen=True)
class Degradations:
    """The distribution one training patch's LR is drawn from (the defaults: `photo`)."""

    clean: float = 0.2  # share of patches given the protocol's clean bicubic LR, nothing else
    blur: float = 0.2  # chance of a blur before the downscale
    blur_sigma: tuple[float, float] = (0.2, 1.2)  # in HR pixels
    anisotropic: float = 0.5  # share of blurs with two sigmas and a random angle
    kernels: dict[str, float] = field(
        default_factory=lambda: {"bicubic": 0.6, "bilinear": 0.2, "area": 0.2})
    noise: float = 0.4  # chance of noise after the downscale
    noise_sigma: tuple[float, float] = (1.0, 10.0)  # 8-bit levels
    poisson: float = 0.3  # share of noise that is signal-dependent
    gray_noise: float = 0.3  # share of noise that is the same on all channels
    jpeg: float = 0.8  # chance of a JPEG save, last
    jpeg_quality: tuple[int, int] = (30, 95)
    subsampling: dict[str, float] = field(
        default_factory=lambda: {"4:2:0": 0.8, "4:4:4": 0.2})

    def __post_init__(self) -> None:
        for name in ("clean", "blur", "anisotropic", "noise", "poisson", "gray_noise", "jpeg"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability, got {getattr(self, name)}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1] <= 3.0:
            raise ValueError(f"blur_sigma must lie in (0, 3], got {self.blur_sigma}")
        if not 0 <= self.noise_sigma[0] <= self.noise_sigma[1] <= 25.0:
            raise ValueError(f"noise_sigma must lie in [0, 25], got {self.noise_sigma}")
        if not 10 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must lie in [10, 100], got {self.jpeg_quality}")
        if set(self.kernels) - set(KERNELS) or set(self.subsampling) - set(SUBSAMPLING):
            raise ValueError(f"kernels from {sorted(KERNELS)}, subsampling from "
                             f"{sorted(SUBSAMPLING)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Degradations:
        d = dict(d)
        for key in ("blur_sigma", "noise_sigma", "jpeg_quality"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def sample(self, hr: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
        """The LR of one 8-bit RGB HR patch, by a chain drawn from rng."""
        if rng.random() < self.clean:
            return downscale(hr, scale, "bicubic")
        img = hr
        if rng.random() < self.blur:
            lo, hi = self.blur_sigma
            sx = rng.uniform(lo, hi)
            if rng.random() < self.anisotropic:
                sy, theta = rng.uniform(lo, hi), rng.uniform(0, math.pi)
            else:
                sy, theta = sx, 0.0
            img = blur(img, gaussian_kernel(sx, sy, theta))
        names = list(self.kernels)
        p = np.array([self.kernels[k] for k in names], np.float64)
        img = downscale(img, scale, names[rng.choice(len(names), p=p / p.sum())])
        if rng.random() < self.noise:
            img = add_noise(img, rng.uniform(*self.noise_sigma), rng,
                            gray=rng.random() < self.gray_noise,
                            poisson=rng.random() < self.poisson)
        if rng.random() < self.jpeg:
            modes = list(self.subsampling)
            p = np.array([self.subsampling[m] for m in modes], np.float64)
            q = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            img = jpeg(img, q, modes[rng.choice(len(modes), p=p / p.sum())])
        return img


# Named distributions, as recipes refer to them.
PRESETS: dict[str, Degradations] = {
    "clean": Degradations(clean=1.0),
    "photo": Degradations(),
}


# -- fixed chains for evaluation ---------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """A fixed degradation: `blur:S` (HR sigma), `noise:S` (levels), `jpeg:Q`, in any order
    in the text but applied as a photo is made: blur, bicubic downscale, noise, JPEG."""

    blur: float = 0.0
    noise: float = 0.0
    jpeg: int | None = None
    seed: int = 0  # noise is drawn from this seed per image, so rows are repeatable

    @property
    def name(self) -> str:
        parts = [f"blur:{self.blur:g}"] if self.blur else []
        parts += [f"noise:{self.noise:g}"] if self.noise else []
        parts += [f"jpeg:{self.jpeg}"] if self.jpeg is not None else []
        return ",".join(parts) or "clean"

    def apply(self, hr: np.ndarray, scale: int, index: int = 0) -> np.ndarray:
        img = blur(hr, gaussian_kernel(self.blur)) if self.blur else hr
        img = downscale(img, scale, "bicubic")
        if self.noise:
            img = add_noise(img, self.noise, np.random.default_rng([self.seed, index]))
        if self.jpeg is not None:
            img = jpeg(img, self.jpeg)
        return img


def parse_chain(text: str) -> Chain:
    """`"noise:5,jpeg:75"` -> Chain; `"clean"` or `""` -> no degradation."""
    if text.strip() in ("", "clean"):
        return Chain()
    values: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition(":")
        if not sep or key not in ("blur", "noise", "jpeg") or key in values:
            raise ValueError(f"bad degradation {part!r}: use blur:S, noise:S, jpeg:Q once each")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"bad degradation {part!r}: {value!r} is not a number") from None
    if "jpeg" in values and not (1 <= values["jpeg"] <= 100 and values["jpeg"].is_integer()):
        raise ValueError("jpeg quality must be an integer in 1..100")
    if not 0 <= values.get("blur", 0) <= 5 or not 0 <= values.get("noise", 0) <= 50:
        raise ValueError("blur sigma must lie in [0, 5] and noise sigma in [0, 50]")
    jpeg_q = int(values["jpeg"]) if "jpeg" in values else None
    return Chain(blur=values.get("blur", 0.0), noise=values.get("noise", 0.0), jpeg=jpeg_q)
