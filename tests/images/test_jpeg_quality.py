"""The JPEG quality estimate from a file's own quantization tables."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.images import imaging, jpeg_quality
from tests.helpers import png_bytes, set5_crop


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
@pytest.mark.parametrize("subsampling", [0, 2])
def test_pillow_jpegs_are_estimated_within_five(quality: int, subsampling: int) -> None:
    data = png_bytes(set5_crop(), "JPEG", quality=quality, subsampling=subsampling)
    got = jpeg_quality.of_image(_open(data))
    assert got is not None and abs(got - quality) <= 5, got
    assert imaging.probe(data, 10**6, 10**7, 2).jpeg_quality == got


def test_grayscale_jpeg_has_one_table_and_an_estimate() -> None:
    data = png_bytes(set5_crop().convert("L"), "JPEG", quality=60)
    assert abs(jpeg_quality.of_image(_open(data)) - 60) <= 5  # type: ignore[operator]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_other_formats_get_no_estimate(fmt: str) -> None:
    data = png_bytes(set5_crop(), fmt)
    assert jpeg_quality.of_image(_open(data)) is None
    assert imaging.probe(data, 10**6, 10**7, 2).jpeg_quality is None


def test_odd_tables_get_no_estimate() -> None:
    assert jpeg_quality.estimate(None) is None
    assert jpeg_quality.estimate({}) is None
    assert jpeg_quality.estimate({0: [1, 2, 3]}) is None
    assert jpeg_quality.estimate({0: [0] * 64}) is None
