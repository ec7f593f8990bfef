"""What the shared job store (Redis) costs and buys, on loopback:

    python -m bench.shared_jobs [--jobs 20] [--lease 3]

1. The event loop's longest wait while a 32 MiB job input (the body limit) is stored in
   Redis and read back, chunk by chunk (the constraint: 50 ms).
2. Small jobs, submitted one after another and fetched when done, against one replica with
   the spool (the baseline: what one process did before) and one with Redis: seconds per
   job, and the ratio.
3. Takeover: two replicas on one Redis, kill -9 of the one running a big job; seconds until
   the other runs it (the lease, plus up to a beat) and until it is done.

Needs redis-server on the PATH. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from app.background.store import CHUNK, Store
from tests.helpers import longest_loop_wait, noise, png_bytes, set5_crop
from tests.redis_server import RedisServer
from tests.server import start_server

PNG = {"content-type": "image/png"}


async def loop_stall(url: str, rounds: int = 3) -> float:
    """The longest the event loop waited (s) while 32 MiB went into Redis and back."""
    data = np.random.default_rng(0).integers(0, 256, 32 * CHUNK, dtype=np.uint8).tobytes()
    store, worst = Store(url), 0.0
    for _ in range(rounds):
        _, wait_s = await longest_loop_wait(store.put_chunks("lsrcnn:bench:in", data))
        _, back_s = await longest_loop_wait(store.get_chunks("lsrcnn:bench:in"))
        worst = max(worst, wait_s, back_s)
    await store.r.delete("lsrcnn:bench:in")
    await store.close()
    return worst


def wait(c: httpx.Client, job_id: str, status: str = "done", poll_s: float = 0.02) -> dict:
    while True:
        view = c.get(f"/v1/jobs/{job_id}").json()
        if view["status"] == status:
            return view
        assert view["status"] not in ("failed", "cancelled"), view
        time.sleep(poll_s)


def per_job_s(url: str, inputs: list[bytes]) -> float:
    with httpx.Client(base_url=url, timeout=60) as c:
        t0 = time.perf_counter()
        for data in inputs:
            job = c.post("/v1/jobs?scale=2", content=data, headers=PNG).json()
            wait(c, job["id"])
            assert c.get(f"/v1/jobs/{job['id']}/result").status_code == 200
        return (time.perf_counter() - t0) / len(inputs)


def takeover(env: dict[str, str]) -> tuple[float, float]:
    procs = [start_server("app", env)[0:2] for _ in range(2)]
    try:
        url = procs[0][1]
        with httpx.Client(base_url=url, timeout=60) as c:
            job = c.post("/v1/jobs?scale=2", content=png_bytes(noise("RGB", 1400, 1400)),
                         headers=PNG).json()
            view = wait(c, job["id"], "running")
            holder = int(view["replica"].split("-")[-2])
            victim = next(p for p, _ in procs if p.pid == holder)
            other = next(u for p, u in procs if p.pid != holder)
            victim.send_signal(signal.SIGKILL)
            t0 = time.perf_counter()
        with httpx.Client(base_url=other, timeout=60) as c:
            while c.get(f"/v1/jobs/{job['id']}").json().get("replica") in (None,
                                                                             view["replica"]):
                time.sleep(0.05)
            taken = time.perf_counter() - t0
            wait(c, job["id"])
            return taken, time.perf_counter() - t0
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--lease", type=float, default=3.0)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    redis_server = RedisServer(folder)
    try:
        stall = asyncio.run(loop_stall(redis_server.url))
        names = ["baby", "bird", "butterfly", "head", "woman"]
        inputs = [png_bytes(set5_crop(names[i % 5], (0, 0, 128, 128))) for i in range(args.jobs)]
        env = {"LSRCNN_WORKERS": "2"}
        rows = []
        for label, extra in (("spool (one process)", {}),
                             ("Redis", {"LSRCNN_JOBS_STORE": redis_server.url})):
            proc, url = start_server("app", {**env, **extra})
            try:
                per_job_s(url, inputs[:3])  # warm
                rows.append((label, per_job_s(url, inputs)))
            finally:
                proc.terminate()
                proc.wait(30)
        taken, done = takeover({**env, "LSRCNN_JOBS_STORE": redis_server.url,
                                "LSRCNN_JOB_LEASE_S": str(args.lease)})
    finally:
        redis_server.stop()
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.jobs} jobs of 128x128 at x2, one after another\n")
    print("| measure | value |\n|---|---|")
    print(f"| event loop's longest wait, 32 MiB stored and read back (x3) | "
          f"{stall * 1000:.1f} ms |")
    for label, seconds in rows:
        print(f"| seconds per small job, submit to result fetched: {label} | {seconds:.3f} |")
    print(f"| Redis over spool | {rows[1][1] / rows[0][1]:.2f}x |")
    print(f"| kill -9 to another replica running the job (lease {args.lease:g} s) | "
          f"{taken:.1f} s |")
    print(f"| kill -9 to the job done (1400x1400 x2) | {done:.1f} s |")


if __name__ == "__main__":
    main()
