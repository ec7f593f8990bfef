"""The model file contract, written once: what an LSRCNN ONNX file takes, gives and states.

Torch-free (numpy only): the export writes through it, the service and the benchmarks read
through it, and evaluation converts colour with it.

- Colour: BT.601 studio-range luma (16..235) of 8-bit RGB; Cb/Cr for the colour the model
  does not see.
- Scaling: the model sees Y / 255 and answers on the same scale, not clamped.
- Tensors: one float32 input `[N, 1, H, W]` named `input`, one float32 output
  `[N, 1, s*H, s*W]` named `output`; N, H and W dynamic.
- Metadata (ONNX `metadata_props`): `scale` and `preset` are required, `arch` defaults to
  `lsrcnn` (files exported before it was recorded lack it); the rest is the model card.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

# -- colour ------------------------------------------------------------------------------


def rgb_to_y(rgb: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """BT.601 studio-range luma (16..235) of 8-bit RGB (..., 3), computed in `dtype` (the
    service uses float32; evaluation float64, as published SR tables do)."""
    r, g, b = (rgb[..., i].astype(dtype) for i in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def rgb_to_ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, Cb, Cr (float32, 0..255 scale) of 8-bit RGB."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = rgb_to_y(rgb)
    cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    return y, cb, cr


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """RGB (float, 0..255 scale, not clipped) of studio-range Y, Cb, Cr."""
    y, cb, cr = y - 16.0, cb - 128.0, cr - 128.0
    r = 255.0 / 219.0 * y + 255.0 / 224.0 * 1.402 * cr
    g = 255.0 / 219.0 * y - 255.0 / 224.0 * (
        1.772 * 0.114 / 0.587 * cb + 1.402 * 0.299 / 0.587 * cr)
    b = 255.0 / 219.0 * y + 255.0 / 224.0 * 1.772 * cb
    return np.stack([r, g, b], axis=-1)


def gray_to_y(v: np.ndarray, peak: float) -> np.ndarray:
    """Luma of a gray pixel (R = G = B = v, `peak` the white level), studio range."""
    return 16.0 + 219.0 * v.astype(np.float32) / peak


def y_to_gray(y: np.ndarray, peak: float) -> np.ndarray:
    return (y - 16.0) * (peak / 219.0)


# -- scaling -----------------------------------------------------------------------------

Y_PEAK = 255.0  # the model sees Y / Y_PEAK


def to_model(y: np.ndarray) -> np.ndarray:
    """Y (0..255 scale) -> the model's input values, float32."""
    return (y / np.float32(Y_PEAK)).astype(np.float32, copy=False)


def from_model(out: np.ndarray) -> np.ndarray:
    """The model's output values -> Y (0..255 scale), in the output's dtype."""
    return out * np.float32(Y_PEAK)


# -- tensors -----------------------------------------------------------------------------

INPUT_NAME = "input"
OUTPUT_NAME = "output"
DATATYPE = "FP32"  # the Open Inference Protocol's name for float32
CHANNELS = 1
DYNAMIC = -1
INPUT_SHAPE = (DYNAMIC, CHANNELS, DYNAMIC, DYNAMIC)  # [N, 1, H, W]
OUTPUT_SHAPE = INPUT_SHAPE  # [N, 1, s*H, s*W]
# Axis names the exporter gives the dynamic dimensions.
INPUT_AXES = {0: "n", 2: "h", 3: "w"}
OUTPUT_AXES = {0: "n", 2: "out_h", 3: "out_w"}


def output_shape(input_shape: tuple[int, ...], scale: int) -> tuple[int, int, int, int]:
    n, c, h, w = input_shape
    return n, c, h * scale, w * scale


def check_input(shape: tuple[int, ...]) -> None:
    """Raise ValueError unless `shape` is a valid [N, 1, H, W]."""
    if len(shape) != 4 or shape[1] != CHANNELS or min(shape) < 1:
        raise ValueError(f"the input must be [N, {CHANNELS}, H, W] with every dimension at "
                         f"least 1, got {list(shape)}")


# -- metadata ----------------------------------------------------------------------------

SCALE, PRESET, ARCH, KIND, STRENGTH = "scale", "preset", "arch", "kind", "strength"
DEFAULT_ARCH = "lsrcnn"  # the only architecture so far; older files do not say
# What a model was trained for: "clean" (the protocol's bicubic downscale; files that do not
# say are clean) or "photo" (blur, resize kernels, noise and JPEG: model.degrade).
CLEAN, PHOTO = "clean", "photo"
KINDS = (CLEAN, PHOTO)
# A photo model may be specialised: "mild" (lightly compressed photos), "medium" (the
# qualities between), "strong" (heavily compressed or noisy ones); files that do not say are
# general ("": any photo).
MILD, MEDIUM, STRONG = "mild", "medium", "strong"
STRENGTHS = ("", MILD, MEDIUM, STRONG)
CARD_KEYS = ("parameters", "macs_per_lr_pixel", "training_data", "iterations",
             "validation_set", "validation_psnr", "degradations", "recipe", "precisions")
CONFIG = "config"  # the network config as JSON (the exporter's record; not needed to serve)
INPUT_NOTE = "float32 [N,1,H,W]: BT.601 studio-range Y / 255"
OUTPUT_NOTE = "float32 [N,1,scale*H,scale*W], same range, not clamped"


class ContractError(ValueError):
    """A model file's metadata does not state what the contract needs."""


@dataclass(frozen=True)
class ModelDescriptor:
    """What a model file states about itself; its name is derived, never read from a path."""

    scale: int
    preset: str
    arch: str = DEFAULT_ARCH
    card: dict[str, str] = field(default_factory=dict, compare=False)
    kind: str = CLEAN
    strength: str = ""  # photo models only: "", mild, medium or strong

    @property
    def name(self) -> str:
        """`<preset>-x<scale>` for clean models, `<preset>-<kind>[-<strength>]-x<scale>` for
        the others."""
        if self.kind == CLEAN:
            return f"{self.preset}-x{self.scale}"
        strength = f"-{self.strength}" if self.strength else ""
        return f"{self.preset}-{self.kind}{strength}-x{self.scale}"

    def metadata(self) -> dict[str, str]:
        """The metadata_props that state this descriptor (what the exporter writes)."""
        strength = {STRENGTH: self.strength} if self.strength else {}
        return {SCALE: str(self.scale), PRESET: self.preset, ARCH: self.arch,
                KIND: self.kind, **strength, "input": INPUT_NOTE, "output": OUTPUT_NOTE,
                **self.card}


def describe(meta: Mapping[str, str]) -> ModelDescriptor:
    """Parse a model file's metadata_props; ContractError names what is missing or wrong."""
    if SCALE not in meta:
        raise ContractError(f"no '{SCALE}' in its metadata")
    try:
        scale = int(meta[SCALE])
    except ValueError:
        raise ContractError(f"'{SCALE}' is not an integer: {meta[SCALE]!r}") from None
    if scale < 1:
        raise ContractError(f"'{SCALE}' must be positive, got {scale}")
    preset = meta.get(PRESET, "").strip()
    if not preset:
        raise ContractError(f"no '{PRESET}' in its metadata")
    arch = meta.get(ARCH, "").strip() or DEFAULT_ARCH
    kind = meta.get(KIND, "").strip() or CLEAN
    if kind not in KINDS:
        raise ContractError(f"'{KIND}' must be one of {list(KINDS)}, got {kind!r}")
    strength = meta.get(STRENGTH, "").strip()
    if strength not in STRENGTHS or (strength and kind != PHOTO):
        raise ContractError(f"'{STRENGTH}' is for photo models, one of {list(STRENGTHS[1:])}; "
                            f"got {strength!r} on a {kind} model")
    card = {k: meta[k] for k in CARD_KEYS if k in meta}
    return ModelDescriptor(scale, preset, arch, card, kind, strength)
