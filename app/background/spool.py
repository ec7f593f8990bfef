"""The jobs spool on disk: one folder per job holding its input, a small JSON state and,
once done, its result.

Whatever is acknowledged survives a crash: every file is written under a temporary name,
fsynced, renamed into place, and its folder fsynced, so kill -9 or a power cut leaves the
old version or the new one, never a torn one. A job's folder appears (renamed from a
temporary one) only once its input and first state are on disk. Blocking: call these from
a worker thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from app.images import imaging

log = logging.getLogger("app.background.spool")

ID = re.compile(r"^[0-9a-f]{32}$")  # 128 random bits, hex
STATE, INPUT, RESULT = "state.json", "input", "result"
PARTIAL = ".partial"  # suffix of anything not yet complete


def new_id() -> str:
    return secrets.token_hex(16)


@dataclass
class JobState:
    """What a job is and where it stands; written as state.json."""

    id: str
    scale: int
    format: str | None  # the output format asked for (None: the input's)
    quality: int
    out_format: str  # the format the result will have
    tiles_total: int  # from the plan made at submission (may change after EXIF rotation)
    tile_h: int
    tile_w: int
    input_bytes: int
    status: str = "queued"
    created: float = dataclasses.field(default_factory=time.time)  # wall clock: TTLs
    finished: float | None = None  # outlive restarts
    error: str | None = None
    result_bytes: int = 0
    result_bound: int = 0  # most bytes its result can take: reserved in the cap until written
    tiles_done: int = 0  # at cancellation (a running job's count is the scheduler's)
    model: str | None = None  # chosen at submission (state files of older versions lack it)
    plan: dict | None = None  # the tile plan accepted at submission (tiling.plan_to_dict)
    strip: bool = False  # metadata=strip: the result carries no EXIF or XMP
    target: list[int] | None = None  # [w, h] the model's output is resized to (any size)
    filename: str | None = None  # the uploaded file's name: the result downloads after it

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> JobState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(raw).items() if k in known})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def folder(self, job_id: str) -> Path:
        if not ID.match(job_id):  # ids come from URLs: never a path of their own
            raise ValueError("not a job id")
        return self.root / job_id

    def create(self, state: JobState, data: bytes) -> None:
        """Write a new job's input and state, durably, then make it appear at once."""
        final = self.folder(state.id)
        partial = final.with_name(final.name + PARTIAL)
        partial.mkdir()
        _write_synced(partial / INPUT, lambda f: f.write(data))
        _write_synced(partial / STATE, lambda f: f.write(state.to_json()))
        _fsync_dir(partial)
        partial.rename(final)
        _fsync_dir(self.root)

    def save(self, state: JobState) -> None:
        """Replace a job's state atomically."""
        folder = self.folder(state.id)
        partial = folder / (STATE + PARTIAL)
        _write_synced(partial, lambda f: f.write(state.to_json()))
        partial.replace(folder / STATE)
        _fsync_dir(folder)

    def read_input(self, job_id: str) -> bytes:
        return (self.folder(job_id) / INPUT).read_bytes()

    def result_path(self, job_id: str) -> Path:
        return self.folder(job_id) / RESULT

    def write_result(self, job_id: str, write: Callable[[IO[bytes]], None]) -> int:
        """Write the result durably through `write(file)`; its size in bytes."""
        final = self.result_path(job_id)
        partial = final.with_name(RESULT + PARTIAL)
        _write_synced(partial, write)
        partial.replace(final)
        _fsync_dir(final.parent)
        return final.stat().st_size

    def drop_input(self, job_id: str) -> int:
        """Remove a finished job's input; the bytes freed."""
        path = self.folder(job_id) / INPUT
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def clear(self, job_id: str) -> None:
        """Remove a job's input and result (any partial ones too), keeping its state."""
        folder = self.folder(job_id)
        for name in (INPUT, RESULT, RESULT + PARTIAL, STATE + PARTIAL):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        _fsync_dir(folder)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def used_bytes(self, job_id: str) -> int:
        folder = self.folder(job_id)
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())

    def scan(self) -> list[JobState]:
        """Every complete job, oldest first. Leftovers of interrupted writes (a submission
        never acknowledged, a folder with no readable state) are removed."""
        states = []
        for path in self.root.iterdir():
            if not path.is_dir():
                continue
            try:
                state = JobState.from_json((path / STATE).read_bytes())
                if state.id != path.name:
                    raise ValueError("state of another job")
            except (OSError, ValueError, TypeError) as err:
                log.warning("removing an incomplete job folder %s: %s", path.name, err)
                shutil.rmtree(path, ignore_errors=True)
                continue
            with contextlib.suppress(FileNotFoundError):  # a result never renamed in
                (path / (RESULT + PARTIAL)).unlink()
            states.append(state)
        return sorted(states, key=lambda s: s.created)


# Bytes per output pixel of each decoded mode (16-bit grayscale stays 16-bit in PNG).
BYTES_PER_PIXEL = {"L": 1, "1": 1, "LA": 2, "La": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "I": 2,
                   "RGBA": 4, "PA": 4, "RGBa": 4}
# Encoded size over raw pixels at worst: PNG at level 1 stores what does not deflate (a
# filter byte per row, 5 bytes per 64 KiB block); JPEG and WebP at quality 100 of noisy
# pixels can pass the raw size.
WORST_RATIO = {"png": 1.02, "jpeg": 1.5, "webp": 1.5}
FRAMING = 64 * 1024


def result_bound(probed: imaging.Probe, scale: int, out_fmt: str) -> int:
    """The most bytes a job's encoded result can take, from its header alone: what the
    spool reserves for it at submission, so the cap holds once results are written."""
    img = probed.image
    mode = "RGBA" if imaging.has_alpha(img) and img.mode in ("P", "RGBA", "PA") else img.mode
    h, w = probed.size
    raw = h * w * scale * scale * BYTES_PER_PIXEL.get(mode, 3)
    return int(raw * WORST_RATIO[out_fmt]) + FRAMING + len(probed.icc_profile or b"")
