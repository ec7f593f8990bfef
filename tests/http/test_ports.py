"""`python -m app` (and so `make serve`) stops at once, saying why, when its port is taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from app.ports import taken
from tests.conftest import ROOT


def test_a_taken_port_fails_early_and_names_the_way_out() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert taken("127.0.0.1", port) == "already in use"
        env = {**os.environ, "LSRCNN_HOST": "127.0.0.1", "LSRCNN_PORT": str(port)}
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert time.monotonic() - t0 < 30  # no model was loaded first
        assert f"127.0.0.1:{port}: already in use" in done.stderr
        assert f"LSRCNN_PORT={port + 1} make serve" in done.stderr
        # What `make serve` runs first, before installing anything: the same check.
        done = subprocess.run(["make", "--no-print-directory", "serve", "VENV=/nonexistent"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "already in use" in done.stderr
        assert not os.path.exists("/nonexistent")
    assert taken("127.0.0.1", port) is None
