"""Load benchmark: the service under 1, 4 and 16 concurrent clients, beside the raw engine
and a naive server, on the same images, tiles and machine, in one run.

    python -m bench.load [--images DIR] [--scale 2] [--seconds 20] [--clients 1 4 16]

Servers run as uvicorn subprocesses on 127.0.0.1 (loopback only); each level sends requests
for a bounded time and count. Reports output megapixels/s, p50/p95/p99 latency and mean
batch size (from the service's own /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from app.engine import Engine
from app.settings import Settings
from app.upscaler import prepare

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(module: str, env: dict[str, str], timeout_s: float = 120.0,
                 output: int = subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    """Start `python -m module` on a free loopback port; return once /health/ready is 200."""
    port = _free_port()
    full_env = {**os.environ, **env, "LSRCNN_HOST": "127.0.0.1", "LSRCNN_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=full_env,
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


@contextmanager
def server(module: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    proc, url = start_server(module, {**env, "LSRCNN_LOG_LEVEL": "warning"})
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    def value(name: str) -> float:
        m = re.search(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    return value("lsrcnn_batch_size_sum"), value("lsrcnn_batch_size_count")


async def _drive(url: str, bodies: list[bytes], scale: int, clients: int, seconds: float,
                 max_requests: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    pixels = 0
    sent = 0
    stop_at = time.perf_counter() + seconds

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal pixels, sent
        i = k
        while time.perf_counter() < stop_at and sent < max_requests:
            sent += 1
            body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            r = await http.post(f"{url}/upscale?scale={scale}", content=body,
                                headers={"content-type": "image/png"})
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            w, h = Image.open(io.BytesIO(r.content)).size
            pixels += w * h

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    return latencies, pixels, time.perf_counter() - t0


def measure(url: str, bodies: list[bytes], scale: int, clients: int, seconds: float,
            max_requests: int, batched: bool) -> dict:
    # One untimed pass warms the connection pool and any lazy state.
    asyncio.run(_drive(url, bodies[:1], scale, 1, 0.0, 1))
    before = _batch_stats(url) if batched else (0.0, 0.0)
    lat, pixels, wall = asyncio.run(_drive(url, bodies, scale, clients, seconds, max_requests))
    after = _batch_stats(url) if batched else (0.0, 0.0)
    tiles, batches = after[0] - before[0], after[1] - before[1]
    q = np.percentile(lat, [50, 95, 99]) if lat else [float("nan")] * 3
    return {"clients": clients, "requests": len(lat), "mp_s": pixels / wall / 1e6,
            "p50": q[0], "p95": q[1], "p99": q[2],
            "batch": tiles / batches if batches else float("nan")}


def raw_engine(bodies: list[bytes], scale: int, settings: Settings, seconds: float) -> dict:
    """The same tiles straight through the engine in full batches, with as many calls in
    flight as the service uses: no HTTP, no codecs, no queue."""
    engine = Engine(settings)
    engine.load()
    jobs = [prepare(body, scale, settings) for body in bodies]
    all_tiles = np.concatenate([job.tiles for job in jobs])
    pixels_per_round = sum(job.plan.height * job.plan.width * scale**2 for job in jobs)
    b = settings.max_batch_size
    batches = [all_tiles[i : i + b] for i in range(0, len(all_tiles), b)]
    workers = settings.resolved_workers(engine.on_gpu)
    engine.run(scale, batches[0])
    rounds, t0 = 0, time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        while time.perf_counter() - t0 < seconds or rounds == 0:
            list(pool.map(lambda x: engine.run(scale, x), batches))
            rounds += 1
    wall = time.perf_counter() - t0
    return {"mp_s": rounds * pixels_per_round / wall / 1e6, "tiles": len(all_tiles),
            "rounds": rounds, "workers": workers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", default=str(ROOT / "tests" / "data" / "Set5"))
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=20.0, help="per level")
    p.add_argument("--max-requests", type=int, default=400, help="per level")
    args = p.parse_args()

    paths = sorted(Path(args.images).glob("*.png"))
    bodies = [path.read_bytes() for path in paths]
    settings = Settings()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"images: {len(bodies)} from {Path(args.images).name}, x{args.scale}; tile "
          f"{settings.tile_size}/{settings.tile_overlap}, max batch {settings.max_batch_size}, "
          f"max wait {settings.max_wait_ms} ms\n")

    raw = raw_engine(bodies, args.scale, settings, args.seconds)
    print(f"raw engine: {raw['mp_s']:.3f} output MP/s ({raw['tiles']} tiles a round, "
          f"{raw['rounds']} rounds, {raw['workers']} calls in flight)\n", flush=True)

    rows = []
    for name, module, batched in (("service", "app", True), ("naive", "bench.naive", False)):
        with server(module, {}) as url:
            for c in args.clients:
                r = measure(url, bodies, args.scale, c, args.seconds, args.max_requests, batched)
                rows.append((name, r))
                print(f"{name} c={c}: {r['mp_s']:.3f} MP/s", flush=True)

    print("\n| server | clients | requests | output MP/s | vs raw engine | p50 s | p95 s | p99 s "
          "| mean batch |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| raw engine (no HTTP) | - | - | {raw['mp_s']:.3f} | 100% | - | - | - | "
          f"{settings.max_batch_size} |")
    for name, r in rows:
        batch = f"{r['batch']:.1f}" if r["batch"] == r["batch"] else "1 (per tile)"
        print(f"| {name} | {r['clients']} | {r['requests']} | {r['mp_s']:.3f} | "
              f"{r['mp_s'] / raw['mp_s']:.0%} | {r['p50']:.2f} | {r['p95']:.2f} | "
              f"{r['p99']:.2f} | {batch} |")


if __name__ == "__main__":
    main()
