"""A real service process for tests and benchmarks (bench/ imports it too), and metric
samples read with prometheus_client's own parser."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(module: str, env: dict[str, str], timeout_s: float = 120.0,
                 output: int = subprocess.DEVNULL, cwd: Path = ROOT, port: int | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """Start `python -m module` (from `cwd`) on `port` (default: a free loopback one);
    return once ready."""
    port = port or free_port()
    # ONNX Runtime unless a test names the engine: tests hold pixels to ONNX Runtime's own.
    full_env = {**os.environ, "LSRCNN_ENGINE": "onnxruntime", **env,
                "LSRCNN_HOST": "127.0.0.1", "LSRCNN_PORT": str(port)}
    if "LSRCNN_SPOOL_DIR" not in env:  # never another server's jobs
        full_env["LSRCNN_SPOOL_DIR"] = spool = tempfile.mkdtemp(prefix="lsrcnn-spool-")
        atexit.register(shutil.rmtree, spool, True)
    proc = subprocess.Popen([sys.executable, "-m", module], cwd=cwd, env=full_env,
                            stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            said = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"{module} exited with {proc.returncode}\n{said}")
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"{module} not ready in {timeout_s:.0f} s")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` (a counter's `_total` included) whose labels
    include `labels`, in a Prometheus text exposition; 0 when there are none."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                total += sample.value
    return total
