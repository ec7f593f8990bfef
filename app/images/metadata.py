"""What a picture says about itself, carried from the input to the output where the format
can hold it (JPEG, PNG, WebP): EXIF, with its orientation reset to 1 since the pixels are
turned already, and without its thumbnail (Pillow writes IFD0 and its sub-IFDs, not the
thumbnail's IFD1: a thumbnail of the small input would contradict the output); XMP; and the
ICC profile. `metadata=strip` drops EXIF and XMP (where camera, date and GPS live) and keeps
the ICC profile, which carries nothing personal and says how to show the colours.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

# A JPEG's EXIF lives in one APP1 segment: 65,533 bytes with its header.
MAX_EXIF_BYTES = 65_000
XMP_PNG_KEY = "XML:com.adobe.xmp"


@dataclass(frozen=True)
class Metadata:
    icc: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None

    def stripped(self) -> Metadata:
        return Metadata(icc=self.icc)


def read(img: Image.Image) -> Metadata:
    """An image's metadata as its file stated it (read once its pixels are loaded: a PNG
    may carry EXIF after them)."""
    info = img.info
    xmp = info.get("xmp") or info.get(XMP_PNG_KEY)
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    return Metadata(info.get("icc_profile") or None, _exif_out(info.get("exif")), xmp or None)


def _exif_out(raw: bytes | None) -> bytes | None:
    if not raw:
        return None
    exif = Image.Exif()
    try:
        exif.load(raw)
        if ExifTags.Base.Orientation in exif:
            exif[ExifTags.Base.Orientation] = 1
        out = exif.tobytes()
    except Exception:  # unreadable EXIF is dropped, never a failed answer
        return None
    return out if len(out) <= MAX_EXIF_BYTES else None


def save_options(meta: Metadata | None, fmt: str) -> dict:
    """Pillow's save options that write `meta` in `fmt` (png, jpeg or webp)."""
    if meta is None:
        return {}
    opts: dict = {}
    if meta.icc:
        opts["icc_profile"] = meta.icc
    if meta.exif:
        opts["exif"] = meta.exif
    if meta.xmp:
        if fmt == "png":
            info = PngInfo()
            with contextlib.suppress(UnicodeDecodeError):
                info.add_itxt(XMP_PNG_KEY, meta.xmp.decode("utf-8"))
                opts["pnginfo"] = info
        else:
            opts["xmp"] = meta.xmp
    return opts
