"""A malformed-input corpus, generated at test time: every case names the answer the README
documents for it. Families: not images, foreign formats, corrupt accepted formats, size
bombs, outputs a format cannot hold, multi-frame input, bad parameters (each sent raw and
as multipart), plus Content-Type, multipart and body-limit cases."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tests.helpers import noise, png_bytes

BOUNDARY = "reliability-boundary"


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    status: int
    body: bytes
    query: str = "scale=2"
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "image/png"})


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    return png_bytes(img, fmt, **kw)


def _small(mode: str = "RGB", seed: int = 0) -> Image.Image:
    return noise(mode, 24, 16, seed)


def not_images() -> dict[str, tuple[int, bytes]]:
    rng = np.random.default_rng(1)
    return {
        "text": (415, b"hello, this is plain text\n"),
        "html": (415, b"<!doctype html><html><body>hi</body></html>"),
        "json": (415, b'{"image": "no"}'),
        "svg": (415, b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'),
        "zip": (415, b"PK\x03\x04" + bytes(40)),
        "gzip": (415, zlib.compress(b"x" * 100)),
        "elf": (415, b"\x7fELF\x02\x01\x01" + bytes(50)),
        "random": (415, rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "one-byte": (415, b"\x00"),
        "empty": (400, b""),
    }


def foreign_formats() -> dict[str, tuple[int, bytes]]:
    rgb, one = Image.new("RGB", (16, 16), (9, 99, 199)), Image.new("1", (16, 16))
    out = {f.lower(): (415, _save(rgb, f)) for f in
           ("ICO", "PPM", "TGA", "PCX", "SGI", "IM", "DDS", "QOI", "EPS", "PDF", "JPEG2000",
            "ICNS")}
    out |= {f.lower(): (415, _save(one, f)) for f in ("XBM", "MSP", "PALM")}
    out["spider"] = (415, _save(Image.new("F", (16, 16)), "SPIDER"))
    return out


ACCEPTED_SAMPLES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP",
                    "tiff": "TIFF"}


def corrupt() -> dict[str, tuple[int, bytes]]:
    out = {}
    for name, fmt in ACCEPTED_SAMPLES.items():
        data = _save(noise("RGB", 64, 48, 3), fmt)
        out[f"{name}-magic-only"] = (400, data[:12])
        out[f"{name}-garbled-header"] = (400, data[:12] + b"\xff" * 60)
        out[f"{name}-truncated"] = (400, data[: len(data) // 2])
    return out


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def _patch(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value):]


def bombs() -> dict[str, tuple[int, bytes]]:
    """Tiny bodies that declare huge images: refused from the header, nothing allocated."""
    gif = _save(Image.new("P", (8, 8)), "GIF")
    bmp = _save(Image.new("RGB", (8, 8)), "BMP")
    jpg = _save(Image.new("RGB", (8, 8)), "JPEG")
    sof = jpg.index(b"\xff\xc0") + 5  # SOF0: length, precision, then height and width
    tif = _save(Image.new("L", (8, 8)), "TIFF")
    return {
        "png-100k-square": (413, _png_header(100_000, 100_000)),
        "png-20k-square": (413, _png_header(20_000, 20_000)),
        "gif-65k-square": (413, _patch(gif, 6, struct.pack("<HH", 65535, 65535))),
        "bmp-50k-square": (413, _patch(bmp, 18, struct.pack("<ii", 50_000, 50_000))),
        "jpeg-65k-square": (413, _patch(jpg, sof, struct.pack(">HH", 65_000, 65_000))),
        "tiff-60k-square": (413, _tiff_size(tif, 60_000, 60_000)),
        # Inside the input limit, over the output limit at x4: 3000^2 * 16 > 64M.
        "png-output-bomb": (413, _png_header(3000, 3000)),
    }


def _tiff_size(data: bytes, w: int, h: int) -> bytes:
    """Rewrite ImageWidth and ImageLength in a little-endian TIFF's first directory."""
    ifd = struct.unpack("<I", data[4:8])[0]
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, typ = struct.unpack("<HH", data[at : at + 4])
        if tag in (256, 257):
            value = w if tag == 256 else h
            packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
            data = _patch(data, at + 8, packed)
    return data


def output_limits() -> dict[str, tuple[int, bytes, str]]:
    wide = Image.new("RGB", (4100, 1), (40, 90, 200))
    trns = noise("P", 24, 16)
    return {
        "png-to-webp-16400": (422, _save(wide, "PNG"), "scale=4&format=webp"),
        "webp-default-16400": (422, _save(wide, "WEBP"), "scale=4"),
        "jpeg-65600": (422, _save(Image.new("RGB", (16_400, 1)), "JPEG"), "scale=4"),
        "png-to-jpeg-65600": (422, _save(Image.new("L", (1, 21_900)), "PNG"),
                              "scale=3&format=jpeg"),
        "rgba-png-to-jpeg": (422, _save(_small("RGBA"), "PNG"), "scale=2&format=jpeg"),
        "la-png-to-jpeg": (422, _save(_small("LA"), "PNG"), "scale=2&format=jpeg"),
        "palette-trns-to-jpeg": (422, _save(trns, "PNG", transparency=0), "format=jpeg"),
        "gif-trns-to-jpeg": (422, _save(trns, "GIF", transparency=0), "format=jpeg"),
        "webp-alpha-default-jpeg": (422, _save(_small("RGBA"), "WEBP"), "format=jpeg"),
        "tiff-rgba-to-jpeg": (422, _save(_small("RGBA"), "TIFF"), "format=jpeg"),
    }


def multi_frame() -> dict[str, tuple[int, bytes]]:
    frames = [_small("RGB", seed) for seed in range(3)]
    return {f"{fmt.lower()}-3-frames": (422, _save(frames[0], fmt, save_all=True,
                                                   append_images=frames[1:]))
            for fmt in ("GIF", "WEBP", "TIFF", "PNG")}  # PNG: APNG


def bad_params() -> dict[str, tuple[int, str]]:
    return {q: (422, q) for q in (
        "scale=0", "scale=1", "scale=5", "scale=-2", "scale=two", "scale=4.5", "scale=nan",
        "scale=inf", "scale=99999999999999999999", "format=gif", "format=PNG", "format=",
        "quality=0", "quality=101", "quality=abc", "scale=2&quality=-1", "width=0",
        "width=-5", "height=abc", "width=10", "height=1", "scale=2&width=900",
        "width=99999999", "widht=900")}


def model_params() -> list[Case]:
    """`model=` on /upscale: an unknown name, an empty one, or one whose scale disagrees."""
    return [case for name, query in (
        ("unknown model", "model=nope-x9"), ("empty model", "model="),
        ("model and scale disagree", "model=lsrcnn-lite-x3&scale=2"),
        ("model of a scale not served", "model=lsrcnn-lite-x8"))
        for case in _both("model-param", name, 422, good_png(), query)]


def multipart(data: bytes, field_name: str = "file", ctype: str = "image/png") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="x"\r\nContent-Type: {ctype}\r\n\r\n').encode() + data + \
        f"\r\n--{BOUNDARY}--\r\n".encode()


MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def _both(family: str, name: str, status: int, body: bytes, query: str = "scale=2",
          ) -> list[Case]:
    """The same bytes sent raw and as a multipart upload."""
    return [Case(family, f"{name} raw", status, body, query),
            Case(family, f"{name} multipart", status, multipart(body), query, MULTIPART)]


def good_png(seed: int = 0) -> bytes:
    return _save(_small("RGB", seed), "PNG")


def cases(max_body_bytes: int) -> list[Case]:
    out: list[Case] = []
    for family, make in (("not-images", not_images), ("foreign-formats", foreign_formats),
                         ("corrupt", corrupt), ("bombs", bombs), ("multi-frame", multi_frame)):
        for name, (status, body) in make().items():
            query = "scale=4" if name == "png-output-bomb" else "scale=2"
            out += _both(family, name, status, body, query)
    for name, (status, body, query) in output_limits().items():
        out += _both("output-limits", name, status, body, query)
    for name, (status, query) in bad_params().items():
        out += _both("bad-params", name, status, good_png(), query)
    fam = "content-type"
    for ctype in ("text/plain", "application/json", "application/x-www-form-urlencoded",
                  "video/mp4", ""):
        out.append(Case(fam, f"content-type {ctype or 'none'}", 415, good_png(),
                        headers={"content-type": ctype} if ctype else {}))
    fam = "multipart"
    two_files = multipart(good_png())[: -len(f"--{BOUNDARY}--\r\n")] + multipart(good_png(1))
    out += [
        Case(fam, "field not named file", 422, multipart(good_png(), "image"), headers=MULTIPART),
        Case(fam, "text field only", 422, (f'--{BOUNDARY}\r\nContent-Disposition: form-data; '
             f'name="file"\r\n\r\nhello\r\n--{BOUNDARY}--\r\n').encode(), headers=MULTIPART),
        Case(fam, "two files", 400, two_files, headers=MULTIPART),
        Case(fam, "empty file", 400, multipart(b""), headers=MULTIPART),
        Case(fam, "no boundary", 400, multipart(good_png()),
             headers={"content-type": "multipart/form-data"}),
        Case(fam, "wrong boundary", 400, multipart(good_png()),
             headers={"content-type": "multipart/form-data; boundary=other"}),
    ]
    fam = "body-limit"
    big = bytes(max_body_bytes + 1)
    out += [Case(fam, "over the limit raw", 413, b"\x89PNG\r\n\x1a\n" + big),
            Case(fam, "over the limit multipart", 413, multipart(big), headers=MULTIPART)]
    return out


def decode_ok(body: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(body)).size
