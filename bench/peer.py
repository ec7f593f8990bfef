"""The service against Triton serving the same exported model, side by side in one run.

    python -m bench.peer [--triton-dir DIR] [--sizes 128 176 512] [--clients 16]
                         [--seconds 15]

Triton (CPU, ONNX Runtime backend) is built by the shared `build.sh` into DIR (default
$LSRCNN_TRITON_DIR or ~/.cache/lsrcnn-triton) and serves `python -m model.triton_repo`'s
repository; the service serves the same ONNX file. Both get the same KServe v2 binary
requests, [1, 1, S, S] FP32 of x2, from `--clients` concurrent clients for `--seconds`
each: throughput (images/s), p50 and p99 latency, and status counts. Skips, saying why,
when Triton cannot be built or started here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from tests.server import free_port, start_server

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "triton"
MODEL = "lsrcnn-lite-x2"
LENGTH = "Inference-Header-Content-Length"


def request(side: int, seed: int = 0) -> tuple[bytes, dict[str, str]]:
    x = np.random.default_rng(seed).random((1, 1, side, side), dtype=np.float32)
    raw = x.astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [1, 1, side, side], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {LENGTH: str(len(header)), "content-type": "application/octet-stream"}


async def load(url: str, side: int, clients: int, seconds: float) -> dict:
    body, headers = request(side)
    latencies: list[float] = []
    counts: Counter = Counter()
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = await http.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers=headers)
            counts[r.status_code] += 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                await asyncio.sleep(0.2)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as h:
        await asyncio.gather(*(client(h) for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"images_per_s": len(latencies) / wall, "p50_s": float(np.percentile(lat, 50)),
            "p99_s": float(np.percentile(lat, 99)), "statuses": dict(counts)}


def triton(build_dir: Path) -> tuple[subprocess.Popen | None, str, str]:
    """(a handle to stop it, its URL, why not) for a Triton serving the exported repository."""
    if not (SHARED / "build.sh").exists():
        return None, "", "no Triton build scripts beside the project (../shared/triton)"
    built = subprocess.run(["bash", str(SHARED / "build.sh"), str(build_dir)],
                           capture_output=True, text=True)
    if built.returncode != 0:
        return None, "", f"Triton build failed: {built.stderr[-300:]}"
    repo = Path(tempfile.mkdtemp(prefix="triton-repo-"))
    subprocess.run([sys.executable, "-m", "model.triton_repo", str(repo)], cwd=ROOT,
                   check=True, capture_output=True)
    port = free_port()
    started = subprocess.run(["bash", str(SHARED / "serve.sh"), str(build_dir), str(repo),
                              str(port)], capture_output=True, text=True)
    if started.returncode != 0:
        return None, "", f"Triton did not start: {started.stderr[-300:]}"
    pid = int(started.stdout.strip().split()[-1])
    return PidHandle(pid), f"http://127.0.0.1:{port}", ""


class PidHandle:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--triton-dir", default=os.environ.get(
        "LSRCNN_TRITON_DIR", str(Path.home() / ".cache" / "lsrcnn-triton")))
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 176, 512])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args()
    handle, turl, why = triton(Path(args.triton_dir))
    if handle is None:
        print(f"SKIPPED: {why}")
        return
    # The service's own default runtime (the test harness pins ONNX Runtime otherwise).
    proc, surl = start_server("app", {"LSRCNN_LOG_LEVEL": "warning", "LSRCNN_ENGINE": "auto"})
    rows = []
    try:
        for side in args.sizes:
            for name, url in (("service", surl), ("Triton", turl)):
                asyncio.run(load(url, side, 2, 2.0))  # warm both the same way
                r = asyncio.run(load(url, side, args.clients, args.seconds))
                rows.append((side, name, r))
                print(f"{side}x{side} {name}: {r['images_per_s']:.2f} img/s, p50 "
                      f"{r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s, {r['statuses']}",
                      flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        handle.kill()
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.clients} clients x {args.seconds:g} s, x2 binary tensors\n")
    print("| size | server | images/s | p50 s | p99 s | p99 / p50 | statuses |")
    print("|---|---|---|---|---|---|---|")
    for side, name, r in rows:
        print(f"| {side}x{side} | {name} | {r['images_per_s']:.2f} | {r['p50_s']:.2f} | "
              f"{r['p99_s']:.2f} | {r['p99_s'] / r['p50_s']:.1f} | {r['statuses']} |")


if __name__ == "__main__":
    main()
