"""Memory of the service: idle, the peak one request adds, and idle again after heavy traffic.

    python -m bench.memory [--size 2000] [--scale 2] [--overload-clients 48]
                           [--overload-seconds 30] [--compare OTHER_CHECKOUT ...]

Starts the service as a subprocess on 127.0.0.1 and reads VmRSS / VmHWM from
/proc/PID/status (writing 5 to /proc/PID/clear_refs resets the peak before each request).
Requests: a photo-like SIZE x SIZE PNG (Set5 images mosaicked and resized, with a little
noise) and the same size of pure noise (the worst case for PNG), each at x SCALE; a PNG of
1 x 1,000,000 pixels; then an overload run of 256x256 requests, after which the idle RSS is
read again. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.load import ROOT, png, server

MB = 1024 * 1024


def status(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    rss, hwm = (int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024  # type: ignore[union-attr]
                for k in ("VmRSS", "VmHWM"))
    return rss, hwm


def settle(pid: int, seconds: float = 2.0) -> int:
    time.sleep(seconds)
    return status(pid)[0]


def photo(size: int) -> Image.Image:
    tiles = [Image.open(p).convert("RGB").resize((size // 2, size // 2), Image.BICUBIC)
             for p in sorted((ROOT / "tests" / "data" / "Set5").glob("*.png"))[:4]]
    img = Image.new("RGB", (size, size))
    for k, t in enumerate(tiles):
        img.paste(t, ((k % 2) * (size // 2), (k // 2) * (size // 2)))
    arr = np.asarray(img).astype(np.int16)
    arr += np.random.default_rng(0).integers(-3, 4, arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def noise(h: int, w: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (h, w, 3), np.uint8))


def peak_of(url: str, pid: int, body: bytes, scale: int) -> tuple[int, int, float]:
    """The request's status, how far it raised the peak RSS, and its latency."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = status(pid)[0]
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/upscale?scale={scale}", content=body,
                   headers={"content-type": "image/png"}, timeout=300)
    seconds = time.perf_counter() - t0
    return r.status_code, status(pid)[1] - before, seconds


async def overload(url: str, body: bytes, clients: int, seconds: float) -> dict[int, int]:
    counts: dict[int, int] = {}
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            r = await http.post(f"{url}/upscale?scale=2", content=body,
                                headers={"content-type": "image/png"})
            counts[r.status_code] = counts.get(r.status_code, 0) + 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return counts


def run(name: str, cwd: Path, args: argparse.Namespace) -> None:
    s, size = args.scale, args.size
    out_rgb = size * size * s * s * 3
    cases = [(f"{size}x{size} photo-like", png(photo(size))),
             (f"{size}x{size} noise", png(noise(size, size))),
             ("1x1,000,000", png(noise(1, 1_000_000)))]
    env = {"LSRCNN_REQUEST_TIMEOUT_S": str(args.timeout)} if args.timeout else {}
    with server(env, cwd=cwd) as (url, pid):
        idle_start = settle(pid)
        print(f"\n{name}: idle after start {idle_start / MB:.0f} MB")
        print("| request | body | status | peak rise | rise / output RGB bytes | seconds |")
        print("|---|---|---|---|---|---|")
        for label, body in cases:
            settle(pid, 1.0)
            code, rise, secs = peak_of(url, pid, body, s)
            ratio = rise / out_rgb if "x1," not in label else float("nan")
            print(f"| {label} x{s} | {len(body) / MB:.1f} MB | {code} | {rise / MB:.0f} MB | "
                  f"{ratio:.2f} | {secs:.1f} |", flush=True)
        idle_after_one = settle(pid)
        crop = png(photo(512).crop((0, 0, 256, 256)))
        counts = asyncio.run(overload(url, crop, args.overload_clients, args.overload_seconds))
        idle_after = settle(pid, 5.0)
        print(f"\nidle: after start {idle_start / MB:.0f} MB, after the requests above "
              f"{idle_after_one / MB:.0f} MB, after {args.overload_clients} clients x "
              f"{args.overload_seconds:.0f} s of 256x256 ({counts}) {idle_after / MB:.0f} MB "
              f"= {idle_after / idle_start:.2f}x the idle after start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=2000)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--overload-clients", type=int, default=48)
    p.add_argument("--overload-seconds", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=None,
                   help="the service's request deadline (LSRCNN_REQUEST_TIMEOUT_S), so that "
                   "sizes that take longer than the default 60 s can be measured")
    p.add_argument("--compare", nargs="*", default=[], help="other checkouts to measure too")
    args = p.parse_args()
    for name, cwd in [("service", ROOT), *((Path(c).name, Path(c)) for c in args.compare)]:
        run(name, cwd, args)


if __name__ == "__main__":
    main()
