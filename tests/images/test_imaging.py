"""Decoding, colour handling and encoding: every mode, orientation, ICC, 16-bit, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from app.images import imaging
from app.images.imaging import ImageError, decode, encode, join, split
from app.images.metadata import Metadata
from tests.helpers import noise, png_bytes

BIG = 10**9


def _rng_image(mode: str, size: tuple[int, int] = (24, 16)) -> Image.Image:
    return noise(mode, *size)


def _roundtrip(img: Image.Image) -> Image.Image:
    """Split and join at scale 1 with the identity in place of the model."""
    planes = split(img)
    return join(planes.y, planes, 1)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "I;16"])
def test_colour_round_trip_is_lossless_to_the_last_level(mode: str) -> None:
    img = _rng_image(mode)
    back = _roundtrip(img)
    assert back.mode == img.mode
    diff = np.abs(np.asarray(back).astype(np.int64) - np.asarray(img).astype(np.int64))
    assert diff.max() <= 1  # at most one level of rounding in the YCbCr round trip


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16"])
def test_every_accepted_mode_decodes(mode: str) -> None:
    decoded = decode(png_bytes(_rng_image(mode)), BIG, BIG, 2)
    expected = {"P": "RGB"}.get(mode, mode)
    assert decoded.image.mode == expected
    assert decoded.format == "png"


def test_palette_with_transparency_keeps_alpha() -> None:
    img = _rng_image("P")
    img.info["transparency"] = 0
    decoded = decode(png_bytes(img, transparency=0), BIG, BIG, 2)
    assert decoded.image.mode == "RGBA"


def test_alpha_is_upscaled_separately_and_kept() -> None:
    img = Image.new("RGBA", (10, 8), (200, 10, 10, 255))
    img.paste((0, 0, 255, 0), (0, 0, 5, 8))  # left half transparent
    planes = split(img)
    out = join(imaging.resize_plane(planes.y, 2), planes, 2)
    alpha = np.asarray(out)[..., 3]
    assert out.size == (20, 16) and out.mode == "RGBA"
    assert alpha[:, :8].max() <= 10 and alpha[:, 12:].min() >= 245


def test_exif_orientation_is_applied() -> None:
    img = _rng_image("RGB", (30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode(png_bytes(img, "JPEG", exif=exif.tobytes()), BIG, BIG, 2)
    assert decoded.image.size == (10, 30)
    assert decoded.format == "jpeg"


def test_icc_profile_is_carried_to_the_output() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    decoded = decode(png_bytes(_rng_image("RGB"), icc_profile=icc), BIG, BIG, 2)
    assert decoded.icc_profile == icc
    out = Image.open(io.BytesIO(encode(decoded.image, "png", 90, Metadata(decoded.icc_profile))))
    assert out.info.get("icc_profile") == icc


def test_sixteen_bit_input_gives_sixteen_bit_png() -> None:
    img = _rng_image("I;16")
    decoded = decode(png_bytes(img), BIG, BIG, 2)
    planes = split(decoded.image)
    out = Image.open(io.BytesIO(encode(join(planes.y, planes, 1), "png", 90, None)))
    assert out.mode.startswith("I")
    arr = np.asarray(out).astype(np.int64)
    assert arr.max() > 255  # really 16-bit, not squeezed to 8
    assert np.abs(arr - np.asarray(img).astype(np.int64)).max() <= 1


def test_output_format_follows_the_input_where_writable() -> None:
    assert imaging.output_format(None, "jpeg") == "jpeg"
    assert imaging.output_format(None, "bmp") == "png"
    assert imaging.output_format("webp", "png") == "webp"


def test_jpeg_cannot_hold_alpha() -> None:
    with pytest.raises(ImageError) as err:
        encode(_rng_image("RGBA"), "jpeg", 90, None)
    assert err.value.status == 422


@pytest.mark.parametrize(("data", "status"), [
    (b"", 400),
    (b"definitely not an image", 415),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400),  # PNG signature, garbage after
])
def test_bad_input_gets_the_right_status(data: bytes, status: int) -> None:
    with pytest.raises(ImageError) as err:
        decode(data, BIG, BIG, 2)
    assert err.value.status == status


def test_truncated_image_is_a_400() -> None:
    data = png_bytes(_rng_image("RGB", (200, 200)))
    with pytest.raises(ImageError) as err:
        decode(data[: len(data) // 2], BIG, BIG, 2)
    assert err.value.status == 400


def test_pixel_limits_apply_before_decoding() -> None:
    # A 20000 x 20000 PNG of one colour: tiny file, 400 MP once decoded (a decompression bomb).
    bomb = png_bytes(Image.new("L", (20000, 20000)), optimize=True)
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageError) as err:
        decode(bomb, 16_000_000, BIG, 2)
    assert err.value.status == 413
    with pytest.raises(ImageError) as err:  # output limit: scale^2 times the input
        decode(png_bytes(_rng_image("RGB", (100, 100))), BIG, 100 * 100 * 4 - 1, 2)
    assert err.value.status == 413
