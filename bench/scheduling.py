"""Admission, fairness and cancellation under load, against a live service on 127.0.0.1.

    python -m bench.scheduling [overload|fairness|cancel ...] [--compare OTHER_CHECKOUT ...]

- overload: 48 and 64 clients send 256x256 x2 requests, then 64 clients 768x768 ones (the
  queue past the deadline), for --seconds each (default 60): the status counts, the share
  of 504s, p50/p99 of the 200s, and the median 503 latency.
- fairness: the median latency of a 288x288 x2 request alone, then while a 2000x2000 x2
  request runs, then while a 1x200,000 strip runs (if it is admitted at all).
- cancel: a 2000x2000 x2 request whose client hangs up after 1 s; the model seconds it cost
  and the tiles it withdrew, read from the service's metrics.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.load import ROOT, metric, png, server
from bench.memory import photo

PNG = {"content-type": "image/png"}


def _noise(h: int, w: int, seed: int = 0) -> bytes:
    return png(Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3),
                                                                    np.uint8)))


async def _overload(url: str, body: bytes, clients: int, seconds: float) -> dict:
    ok: list[float] = []
    busy: list[float] = []
    counts: Counter = Counter()
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = await http.post(f"{url}/upscale?scale=2", content=body, headers=PNG)
            dt = time.perf_counter() - t0
            counts[r.status_code] += 1
            if r.status_code == 200:
                ok.append(dt)
            elif r.status_code == 503:
                busy.append(dt)
                await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 1.0))

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    total = sum(counts.values())
    return {"counts": dict(counts), "504_share": counts[504] / total if total else 0.0,
            "p50": float(np.percentile(ok, 50)) if ok else float("nan"),
            "p99": float(np.percentile(ok, 99)) if ok else float("nan"),
            "busy_p50_ms": statistics.median(busy) * 1000 if busy else float("nan")}


def overload(url: str, name: str, seconds: float, levels: list[tuple[int, int]]) -> None:
    print(f"\n{name}: overload, x2 for {seconds:.0f} s per level")
    print("| clients | image | statuses | 504 share | p50 of 200s (s) | p99 of 200s (s) "
          "| median 503 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for clients, side in levels:
        body = png(photo(2 * side).crop((side // 2, side // 2, side // 2 * 3, side // 2 * 3)))
        r = asyncio.run(_overload(url, body, clients, seconds))
        counts = " ".join(f"{k}: {v}" for k, v in sorted(r["counts"].items()))
        print(f"| {clients} | {side}x{side} | {counts} | {r['504_share']:.1%} | "
              f"{r['p50']:.2f} | {r['p99']:.2f} | {r['busy_p50_ms']:.1f} |", flush=True)
        time.sleep(5)  # let the queue drain


def _post(url: str, body: bytes, timeout: float = 300) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/upscale?scale=2", content=body, headers=PNG, timeout=timeout)
    return r.status_code, time.perf_counter() - t0


async def _during(url: str, big: bytes, small: bytes, repeats: int, after: float
                  ) -> tuple[int, list[float], Counter]:
    """Small requests one after another while the big one runs."""
    async with httpx.AsyncClient(timeout=300) as http:
        big_task = asyncio.create_task(http.post(f"{url}/upscale?scale=2", content=big,
                                                 headers=PNG))
        await asyncio.sleep(after)  # the big one is under way
        times: list[float] = []
        statuses: Counter = Counter()
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = await http.post(f"{url}/upscale?scale=2", content=small, headers=PNG)
            statuses[r.status_code] += 1
            times.append(time.perf_counter() - t0)
            if big_task.done():
                break
        still_running = not big_task.done()
        status = (await big_task).status_code
        if not still_running:
            print("  (the big request ended before the small ones: lengthen it)")
        return status, times, statuses


def fairness(url: str, name: str) -> None:
    small = _noise(288, 288, 1)
    for _ in range(2):
        _post(url, small)  # warm
    solo = statistics.median(_post(url, small)[1] for _ in range(5))
    print(f"\n{name}: fairness, 288x288 x2 alone: median {solo:.3f} s")
    print("| running meanwhile | its status | 288x288 statuses | median (s) | / alone |")
    print("|---|---|---|---|---|")
    for label, big, after in (("2000x2000 x2", png(photo(2000)), 2.0),
                              ("1x200,000 x2", _noise(1, 200_000), 0.3)):
        status, times, statuses = asyncio.run(_during(url, big, small, 5, after))
        med = statistics.median(times)
        got = " ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
        print(f"| {label} | {status} | {got} | {med:.3f} | {med / solo:.2f} |", flush=True)


def cancel(url: str, name: str) -> None:
    body = png(photo(2000))
    before = {k: metric(url, k) for k in ("lsrcnn_withdrawn_model_seconds_total",
                                          "lsrcnn_withdrawn_tiles_total", "lsrcnn_tiles_total")}

    async def leave_after(seconds: float) -> float:
        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=300) as http:
            try:
                r = await asyncio.wait_for(http.post(f"{url}/upscale?scale=2", content=body,
                                                     headers=PNG), seconds)
                raise RuntimeError(f"answered {r.status_code} before the client left: {r.text}")
            except TimeoutError:  # the client hangs up
                pass
        return time.perf_counter() - t0

    left = asyncio.run(leave_after(1.0))
    time.sleep(5)  # whatever was running finishes
    after = {k: metric(url, k) for k in before}
    spent = after["lsrcnn_withdrawn_model_seconds_total"] - before[
        "lsrcnn_withdrawn_model_seconds_total"]
    print(f"\n{name}: cancel, 2000x2000 x2, client left after {left:.1f} s: "
          f"{spent:.2f} worker s spent on it (over all workers), "
          f"{after['lsrcnn_withdrawn_tiles_total'] - before['lsrcnn_withdrawn_tiles_total']:.0f}"
          f" tiles withdrawn, "
          f"{after['lsrcnn_tiles_total'] - before['lsrcnn_tiles_total']:.0f} tiles run")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", nargs="*", default=["overload", "fairness", "cancel"])
    p.add_argument("--seconds", type=float, default=60.0, help="per overload level")
    p.add_argument("--levels", nargs="+", default=["48x256", "64x256", "64x768"],
                   help="overload levels as CLIENTSxSIDE (square inputs)")
    p.add_argument("--compare", nargs="*", default=[], help="other checkouts to measure too")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="settings for the servers, e.g. LSRCNN_REQUEST_TIMEOUT_S=10")
    args = p.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    levels = [(int(c), int(side)) for c, side in (v.split("x") for v in args.levels)]
    for name, cwd in [("service", ROOT), *((Path(c).name, Path(c)) for c in args.compare)]:
        with server(env, cwd=cwd) as (url, _):
            if "fairness" in args.what:
                fairness(url, name)
            if "cancel" in args.what:
                cancel(url, name)
            if "overload" in args.what:
                overload(url, name, args.seconds, levels)


if __name__ == "__main__":
    main()
