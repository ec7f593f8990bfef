"""Any output size: an integer or fractional scale, or a target width and/or height.

The model runs at the smallest of its integer scales that reaches the target; the result
is then resized down to the target with Pillow's Lanczos filter (antialiased; its
`reducing_gap` measured no better here, docs/benchmarks.md). Sizes count the image as
oriented (EXIF applied). The service only enlarges: a target smaller than the input, on
either side, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

# The resampled images keep their alpha right: colour is weighted by it while resizing.
PREMULTIPLIED = {"RGBA": "RGBa", "LA": "La"}


class SizeError(ValueError):
    """The size asked for cannot be made (a 422)."""


@dataclass(frozen=True)
class Size:
    """What a request asks for; all None: the service's default scale."""

    scale: float | None = None
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise SizeError("give a scale, or a width and/or height, not both")

    @property
    def integer(self) -> int | None:
        """The scale when it is a whole number: the model's own size, nothing resized."""
        if self.scale is not None and float(self.scale).is_integer():
            return int(self.scale)
        return None

    @property
    def by_image(self) -> bool:
        """Whether the model's scale depends on the image's size (width or height asked)."""
        return self.width is not None or self.height is not None

    def early_scale(self, scales: list[int]) -> int | None:
        """The model scale known before the image is seen: a plain or fractional scale's;
        None for the default scale, or when a width or height decides."""
        if self.scale is None:
            return None
        return model_scale(self.scale, scales)

    def resolve(self, width: int, height: int, scales: list[int]
                ) -> tuple[int, tuple[int, int] | None]:
        """The model scale for an image of width x height, and the final size (None: the
        model's own output, nothing to resize)."""
        if self.scale is not None:
            factor = float(self.scale)
            target = (round(width * factor), round(height * factor))
        else:
            w, h = self.width, self.height
            if w is None:
                w = round(width * h / height)  # type: ignore[operator]
            if h is None:
                h = round(height * w / width)
            if w < width or h < height:
                raise SizeError(f"target {w}x{h} is smaller than the image ({width}x{height}) "
                                "on one side: this service only enlarges")
            target = (w, h)
            factor = max(w / width, h / height)
        scale = model_scale(factor, scales)
        if target == (width * scale, height * scale):
            return scale, None
        return scale, target


def model_scale(factor: float, scales: list[int]) -> int:
    """The smallest available integer scale that reaches `factor`."""
    if factor <= 1:
        raise SizeError(f"a scale of {factor:g} does not enlarge the image: ask for more "
                        "than 1 (or a width or height larger than the image's)")
    fit = [s for s in sorted(scales) if s >= factor - 1e-9]
    if not fit:
        raise SizeError(f"x{factor:.3g} is beyond the largest scale served: scale must be "
                        f"at most {max(scales)}")
    return fit[0]


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Down to `size` with Lanczos, alpha premultiplied while resampling; 16-bit gray
    through 32-bit (Pillow resamples I;16 with nearest only)."""
    mode = image.mode
    if mode in PREMULTIPLIED:
        return image.convert(PREMULTIPLIED[mode]).resize(size, Image.LANCZOS).convert(mode)
    if mode.startswith("I;16"):
        return image.convert("I").resize(size, Image.LANCZOS).convert(mode)
    return image.resize(size, Image.LANCZOS)
