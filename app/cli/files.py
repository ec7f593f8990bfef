"""Which files a command line names, and where each one's result goes."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# The format a result is written in when none is asked for: the input's where the service
# writes it, else PNG (as the service answers).
WRITTEN = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}
DEFAULT_NAME = "{stem}_{size}.{ext}"


@dataclass(frozen=True)
class Task:
    source: Path
    target: Path


def expand(args: list[str]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(file, its folder relative to the output) for each image named: files as given,
    folders searched recursively (their subfolders kept), globs (`**` recursive) expanded.
    Also the arguments that matched nothing."""
    found: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((f, f.parent.relative_to(path)))
        elif path.is_file():
            found.append((path, Path()))
        elif any(ch in arg for ch in "*?["):
            hits = [Path(h) for h in sorted(glob.glob(arg, recursive=True))]
            hits = [h for h in hits if h.is_file() and h.suffix.lower() in IMAGE_SUFFIXES]
            found += [(h, Path()) for h in hits]
            if not hits:
                missing.append(arg)
        else:
            missing.append(arg)
    seen: set[Path] = set()
    unique = []
    for f, rel in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append((f, rel))
    return unique, missing


def size_label(scale: float | None, width: int | None, height: int | None) -> str:
    """How a name says the size asked for: x2, x1.5, w1920, h1080, 1920x1080."""
    if width and height:
        return f"{width}x{height}"
    if width:
        return f"w{width}"
    if height:
        return f"h{height}"
    return f"x{scale:g}" if scale else "x2"


def plan(found: list[tuple[Path, Path]], out: Path, pattern: str, size: str,
         fmt: str | None) -> list[Task]:
    """Each input's output path: `pattern` with {stem}, {size} and {ext}."""
    tasks = []
    for source, rel in found:
        ext = {"jpeg": "jpg"}.get(fmt or "", fmt) or WRITTEN.get(source.suffix.lower(), "png")
        name = pattern.format(stem=source.stem, size=size, ext=ext)
        tasks.append(Task(source, out / rel / name))
    return tasks


def up_to_date(task: Task) -> bool:
    """The result exists and is newer than its input: a rerun skips it."""
    try:
        return task.target.stat().st_mtime >= task.source.stat().st_mtime
    except FileNotFoundError:
        return False


def write_atomically(path: Path, data: bytes) -> None:
    """Whole or not at all: an interrupted run never leaves a half result to be skipped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    part.replace(path)
