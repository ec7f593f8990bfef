"""The README runs as written: every `curl` and `lsrcnn-upscale` block of its shell examples
runs, whole and in order, against a live server started by the README's own `make serve`;
every `make` line names a target that exists (`make -n`), except `make serve`, which is
the live server. Only lines that say they need a cluster or a GPU would be skipped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.server import free_port

pytestmark = pytest.mark.slow
README = ROOT / "README.md"
BLOCK = re.compile(r"```(?:sh|bash)\n(.*?)```", re.S)
CLIENT = re.compile(r"^(?:\w+=\$\(|until )?(curl|\.venv/bin/lsrcnn-upscale)\s")
MAKE = re.compile(r"^\s*(?:[A-Z_]+=\S+\s+)*make\s+([\w-]+)")
NEEDS_ELSEWHERE = re.compile(r"cluster|GPU", re.I)


def blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    return [(text[:m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)]


def commands(body: str) -> list[str]:
    """The block's commands, continuation lines joined."""
    return [c for c in re.sub(r"\\\n\s*", " ", body).split("\n") if c.strip()]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make serve`, as the README says, on a free port."""
    port = free_port()
    spool = tmp_path_factory.mktemp("spool")
    log = open(tmp_path_factory.mktemp("log") / "serve.log", "wb")  # noqa: SIM115
    env = {**os.environ, "LSRCNN_PORT": str(port), "LSRCNN_SPOOL_DIR": str(spool),
           "LSRCNN_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(["make", "serve"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None, "make serve exited"
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "make serve never became ready"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A repository root whose outputs land in a temporary folder."""
    for name in ("tests", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def test_every_client_block_runs_against_a_live_server(live: str, workdir: Path) -> None:
    ran = 0
    for line, body in blocks():
        if not any(CLIENT.match(c.strip()) for c in commands(body)):
            continue
        assert not NEEDS_ELSEWHERE.search(body), f"README line {line}: says where it runs"
        script = "set -euo pipefail\nmkdir -p out\n" + body.replace("127.0.0.1:8000",
                                                                     live.split("//")[1])
        r = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True,
                           text=True, timeout=600, env={**os.environ, "LSRCNN_URL": live})
        assert r.returncode == 0, f"README block at line {line}:\n{r.stdout}\n{r.stderr}"
        ran += 1
        if "(1152, 1152)" in body:
            assert "(1152, 1152)" in r.stdout  # what the README says it prints
    assert ran >= 3
    out = workdir / "out"
    sizes = {p.relative_to(out).as_posix(): Image.open(p).size
             for p in out.rglob("*") if p.is_file()}
    assert sizes["bird_x4.png"] == (1152, 1152)
    assert sizes["bird_x2.webp"] == (576, 576)
    assert sizes["bird_1000.png"] == (1000, 1000)
    assert sizes["bird_x1.5.png"] == (432, 432)
    assert sizes["butterfly_x3.png"] == (768, 768)
    assert sizes["baby_x2.png"] == (1024, 1024)
    assert sizes["set5/bird_x2.png"] == (576, 576)
    assert sizes["local/bird_x2.png"] == (576, 576)
    assert sizes["wide/bird_w800.jpg"] == (800, 800)


def test_every_make_line_names_a_target_that_exists() -> None:
    seen = set()
    for line, body in blocks():
        for command in commands(body):
            m = MAKE.match(command)
            if not m or NEEDS_ELSEWHERE.search(command.split("#")[0]):
                continue
            target = m.group(1)
            seen.add(target)
            if target == "serve":
                continue  # the live server of the test above
            r = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
            assert r.returncode == 0, f"README line {line}: make {target}: {r.stderr}"
    assert {"serve", "test", "image"} <= seen
