"""lsrcnn-upscale end to end: a folder through a real server's jobs API, with a broken
file in the middle; resuming; names and sizes; globs; and --local with no server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from app.cli import files
from tests.conftest import SET5
from tests.server import start_server

ENV = {"LSRCNN_TILE_SIZE": "64", "LSRCNN_WORKERS": "2"}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    proc, url = start_server("app", ENV)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli.main", *args, "--quiet"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three small images, one in a subfolder, and a broken one among them."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("bird", "butterfly"):
        Image.open(SET5 / f"{name}.png").crop((0, 0, 80, 60)).save(src / f"{name}.png")
    Image.open(SET5 / "head.png").convert("RGB").crop((0, 0, 70, 50)).save(
        src / "sub" / "head.jpg", quality=80)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    return src


def test_a_folder_through_the_service_with_a_failure_in_the_middle(
        server: str, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = cli(str(folder), "--out", str(out), "--url", server, "--scale", "2", "--jobs", "2")
    assert r.returncode == 1, r.stderr
    assert "3 written, 0 already done, 1 failed" in r.stderr
    assert f"failed {folder / 'broken.png'}: 400" in r.stderr  # which, and why
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "bird_x2.png", "butterfly_x2.png", "sub", "sub/head_x2.jpg"]
    assert Image.open(out / "bird_x2.png").size == (160, 120)
    assert Image.open(out / "sub" / "head_x2.jpg").format == "JPEG"
    assert not list(out.rglob("*.part"))

    # A rerun resumes: what is done is skipped; the broken file fails again.
    (folder / "broken.png").unlink()
    r = cli(str(folder), "--out", str(out), "--url", server, "--scale", "2")
    assert r.returncode == 0 and "0 written, 3 already done, 0 failed" in r.stderr, r.stderr
    # A newer input is redone.
    os.utime(folder / "bird.png")
    r = cli(str(folder), "--out", str(out), "--url", server, "--scale", "2")
    assert "1 written, 2 already done" in r.stderr, r.stderr


def test_sizes_names_formats_and_globs(server: str, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = cli(str(folder / "**" / "*.jpg"), str(folder / "bird.png"), "--out", str(out),
            "--url", server, "--width", "200", "--format", "webp", "--name",
            "{size}-{stem}.{ext}", "--kind", "clean")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["w200-bird.webp", "w200-head.webp"]
    assert Image.open(out / "w200-bird.webp").size == (200, 150)
    r = cli(str(folder / "bird.png"), "--out", str(out), "--url", server, "--width", "10")
    assert r.returncode == 1 and "smaller than the image" in r.stderr
    r = cli("nothing-here/*.png", "--out", str(out), "--url", server)
    assert r.returncode == 2 and "no such file, folder or matching image" in r.stderr


def test_an_unreachable_service_fails_every_file_and_says_so(folder: Path,
                                                             tmp_path: Path) -> None:
    r = cli(str(folder / "bird.png"), "--out", str(tmp_path / "o"), "--url",
            "http://127.0.0.1:9")
    assert r.returncode == 1 and "no answer from the service" in r.stderr


def test_local_runs_the_models_in_process(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.rmtree(folder / "sub")
    (folder / "broken.png").unlink()
    r = cli(str(folder), "--out", str(out), "--local", "--scale", "1.5",
            env={**ENV, "LSRCNN_ENGINE": "onnxruntime"})
    assert r.returncode == 0, r.stderr
    assert Image.open(out / "butterfly_x1.5.png").size == (120, 90)


def test_names_follow_the_pattern(tmp_path: Path) -> None:
    a = tmp_path / "a.JPEG"
    a.write_bytes(b"")
    (task,) = files.plan([(a, Path("x"))], tmp_path / "o", files.DEFAULT_NAME,
                         files.size_label(None, 1920, 1080), None)
    assert task.target == tmp_path / "o" / "x" / "a_1920x1080.jpg"
    assert files.size_label(2.5, None, None) == "x2.5"
    assert files.size_label(None, None, 700) == "h700"
