"""The download's name: the uploaded file's, with what was done to it (`butterfly_x2.png`,
`photo_1920x1440.jpg`), for /upscale's and a job result's Content-Disposition."""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from urllib.parse import quote

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|;]+')


def stem(uploaded: str | None, fallback: str) -> str:
    """The uploaded name without folders or extension, cleaned for a header; `fallback`
    when there is none."""
    if not uploaded:
        return fallback
    base = PureWindowsPath(PurePosixPath(uploaded).name).name  # either kind of folder
    base = UNSAFE.sub("_", base.rsplit(".", 1)[0] if "." in base[1:] else base).strip(" .")
    return base[:120] or fallback


def suffix(scale: int, target: tuple[int, int] | None) -> str:
    """What was done: `_x2` (the model's own size), `_1920x1440` (resized to a target size
    or a fractional scale)."""
    if target is not None:
        return f"_{target[0]}x{target[1]}"
    return f"_x{scale}"


def download_name(uploaded: str | None, fallback: str, what: str, fmt: str) -> str:
    return f"{stem(uploaded, fallback)}{what}.{EXTENSIONS.get(fmt, fmt)}"


def disposition(name: str) -> str:
    """An inline Content-Disposition: an ASCII `filename` and the exact UTF-8 `filename*`."""
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_")
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"
