"""Compose's resource limits: present, and (heavy) above the measured peak of the request
they are sized for."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT, SET5
from tests.server import start_server

UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def _service() -> dict:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose["services"]["upscaler"]


def _mem_limit_bytes() -> int:
    value, unit = re.fullmatch(r"(\d+)([kmg]?)b?", str(_service()["mem_limit"]).lower()).groups()
    return int(value) * UNITS[unit]


def test_compose_sets_memory_cpu_and_pids_limits() -> None:
    service = _service()
    assert _mem_limit_bytes() >= 2**30
    assert 0 < float(service["cpus"]) <= 16 and 32 <= int(service["pids_limit"]) <= 4096


def _status(pid: int, key: str) -> int:
    """A number from /proc/PID/status (kB fields in bytes)."""
    status = Path(f"/proc/{pid}/status").read_text()
    number, kb = re.search(rf"^{key}:\s+(\d+)( kB)?", status, re.M).groups()
    return int(number) * (1024 if kb else 1)


@pytest.mark.heavy
def test_peak_memory_of_a_2000_square_x2_request_fits_the_compose_limit(tmp_path: Path) -> None:
    img = Image.open(SET5 / "baby.png").convert("RGB").resize((2000, 2000), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    with open(tmp_path / "server.log", "wb") as log:
        # The container's own default runtime, whatever the test harness pins elsewhere.
        proc, url = start_server("app", {"LSRCNN_LOG_LEVEL": "warning", "LSRCNN_ENGINE": "auto"},
                                 output=log)
    try:
        r = httpx.post(f"{url}/upscale?scale=2", content=buf.getvalue(),
                       headers={"content-type": "image/png"}, timeout=600)
        assert r.status_code == 200
        peak, threads = _status(proc.pid, "VmHWM"), _status(proc.pid, "Threads")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"peak RSS {peak / 2**20:.0f} MiB, {threads} threads")
    assert peak < 0.9 * _mem_limit_bytes()
    assert threads < int(_service()["pids_limit"]) // 4
