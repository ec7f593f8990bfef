"""Load benchmark: the service against what a user could do without it, in one run.

    python -m bench.load [--images DIR] [--crop 256] [--scale 2] [--clients 1 16]
                         [--seconds 20] [--compare OTHER_CHECKOUT ...]

Baselines, on the same images, machine and run:
- whole image: the same ONNX file run once per image on the whole Y plane, one ONNX Runtime
  session using every core, no HTTP, no tiling, no codecs (what a user could do with no
  service); where OpenVINO runs bf16 here, the same in OpenVINO bf16 too (one stream, every
  core), the fastest a user could run the file by hand;
- same tiles: the service's own tile plans straight through its engine and workers, no HTTP.
The service (and each `--compare` checkout, e.g. an older commit in a git worktree) runs as
a uvicorn subprocess on 127.0.0.1; each client level sends requests for a bounded time and
count. Reports output megapixels/s, the two ratios, latency percentiles, the status counts
and the tile overhead the service reported.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from app.images import imaging
from app.runtime import runners, tiling
from app.runtime.engine import Engine
from app.runtime.runners import OpenVinoRunner
from app.settings import Settings
from model import contract
from tests.server import metric as metric_value
from tests.server import start_server

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def server(env: dict[str, str] | None = None, cwd: Path = ROOT):  # type: ignore[no-untyped-def]
    # The service's own default runtime (the test harness pins ONNX Runtime otherwise).
    env = {"LSRCNN_ENGINE": "auto", **(env or {}), "LSRCNN_LOG_LEVEL": "warning"}
    proc, url = start_server("app", env, cwd=cwd)
    try:
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def metric(url: str, name: str) -> float:
    """Sum of a metric's samples on a running service (0 when absent)."""
    return metric_value(httpx.get(f"{url}/metrics").text, name)


def load_images(folder: str, crop: int | None) -> list[Image.Image]:
    """RGB images of a folder; with `crop`, the centre crop x crop of each one big enough."""
    images = []
    for path in sorted(Path(folder).glob("*.png")):
        img = Image.open(path).convert("RGB")
        if crop:
            if min(img.size) < crop:
                continue
            x, y = (img.width - crop) // 2, (img.height - crop) // 2
            img = img.crop((x, y, x + crop, y + crop))
        images.append(img)
    return images


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _rounds(work, seconds: float) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Run `work()` for at least `seconds` and at least once; rounds and wall time."""
    rounds, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or rounds == 0:
        work()
        rounds += 1
    return rounds, time.perf_counter() - t0


def _model(engine: Engine, scale: int) -> str:
    """The model the service would use for this scale."""
    name = engine.model_for(scale)
    if name is None:
        raise SystemExit(f"no x{scale} model")
    return name


def whole_image(images: list[Image.Image], scale: int, seconds: float,
                precision: str = "fp32") -> dict:
    """Each image's Y once, whole, in one call using every core: ONNX Runtime (fp32), or
    OpenVINO (bf16)."""
    cores = os.cpu_count() or 1
    engine = Engine(Settings(workers=1, intra_op_threads=cores, engine="onnxruntime"))
    engine.load()
    planes = [contract.to_model(imaging.split(img).y)[None, None] for img in images]
    name = _model(engine, scale)
    if precision != "fp32":
        engine.runners[name] = OpenVinoRunner(engine.models[name].path, precision, 1, cores)
    engine.run(name, planes[0])
    calls: list[float] = []

    def work() -> None:
        for y in planes:
            t0 = time.perf_counter()
            engine.run(name, y)
            calls.append(time.perf_counter() - t0)

    rounds, wall = _rounds(work, seconds)
    pixels = sum(img.width * img.height for img in images) * scale**2
    return {"mp_s": rounds * pixels / wall / 1e6, "call_p50": float(np.median(calls))}


def same_tiles(images: list[Image.Image], scale: int, settings: Settings,
               seconds: float) -> dict:
    """The service's tile plans (as under load: no spreading) through its engine and
    workers, one tile a call: the service's own model work without HTTP or codecs."""
    engine = Engine(settings)
    engine.load()
    name = _model(engine, scale)
    workers = settings.resolved_workers(engine.on_gpu)
    side = settings.tile_size + 2 * settings.tile_overlap
    engine.choose(name, (side, side), workers)  # the runtime the service would choose
    tiles = []
    for img in images:
        y = contract.to_model(imaging.split(img).y)
        plan = tiling.plan_tiles(img.height, img.width, settings.tile_size,
                                 settings.tile_overlap)
        tiles += [tiling.cut(y, plan, r, c)[None, None] for r, c in plan.tiles()]
    with ThreadPoolExecutor(workers) as pool:
        rounds, wall = _rounds(lambda: list(pool.map(lambda x: engine.run(name, x), tiles)),
                               seconds)
    pixels = sum(img.width * img.height for img in images) * scale**2
    info = engine.models[name]
    return {"mp_s": rounds * pixels / wall / 1e6, "tiles": len(tiles), "workers": workers,
            "runtime": f"{info.engine} {info.precision}"}


async def _drive(url: str, bodies: list[bytes], scale: int, clients: int, seconds: float,
                 max_requests: int) -> tuple[list[float], Counter, int, float]:
    latencies: list[float] = []
    statuses: Counter = Counter()
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
            statuses[r.status_code] += 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
                w, h = Image.open(io.BytesIO(r.content)).size
                pixels += w * h

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    return latencies, statuses, pixels, time.perf_counter() - t0


def measure(url: str, bodies: list[bytes], scale: int, clients: int, seconds: float,
            max_requests: int) -> dict:
    asyncio.run(_drive(url, bodies[:1], scale, 1, 0.0, 1))  # warm the connection and caches
    before = (metric(url, "lsrcnn_model_pixels_total"), metric(url, "lsrcnn_input_pixels_total"))
    lat, statuses, pixels, wall = asyncio.run(_drive(url, bodies, scale, clients, seconds,
                                                     max_requests))
    model_px = metric(url, "lsrcnn_model_pixels_total") - before[0]
    input_px = metric(url, "lsrcnn_input_pixels_total") - before[1]
    q = np.percentile(lat, [50, 95, 99]) if lat else [float("nan")] * 3
    return {"clients": clients, "requests": sum(statuses.values()), "statuses": dict(statuses),
            "mp_s": pixels / wall / 1e6, "p50": q[0], "p95": q[1], "p99": q[2],
            "overhead": model_px / input_px if input_px else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", default=str(ROOT / "tests" / "data" / "Set5"))
    p.add_argument("--crop", type=int, default=None, help="centre crops of this side")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    p.add_argument("--seconds", type=float, default=20.0, help="per level")
    p.add_argument("--max-requests", type=int, default=2000, help="per level")
    p.add_argument("--compare", nargs="*", default=[], help="other checkouts to serve too")
    args = p.parse_args()

    images = load_images(args.images, args.crop)
    bodies = [png(img) for img in images]
    settings = Settings()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    sizes = sorted({img.size for img in images})
    print(f"images: {len(images)} from {Path(args.images).name}"
          f"{f', {args.crop}x{args.crop} crops' if args.crop else ''} ({sizes[0]}..{sizes[-1]}),"
          f" x{args.scale}\n", flush=True)

    whole = whole_image(images, args.scale, args.seconds)
    print(f"whole image: {whole['mp_s']:.3f} output MP/s, median call {whole['call_p50']:.3f} s",
          flush=True)
    whole16 = None
    if "BF16" in runners.cpu_capabilities():
        whole16 = whole_image(images, args.scale, args.seconds, "bf16")
        print(f"whole image, OpenVINO bf16: {whole16['mp_s']:.3f} output MP/s, median call "
              f"{whole16['call_p50']:.3f} s", flush=True)
    tiles = same_tiles(images, args.scale, settings, args.seconds)
    print(f"same tiles: {tiles['mp_s']:.3f} output MP/s ({tiles['tiles']} tiles a round, "
          f"{tiles['workers']} workers, {tiles['runtime']})\n", flush=True)

    rows = []
    for name, cwd in [("service", ROOT), *((Path(c).name, Path(c)) for c in args.compare)]:
        with server(cwd=cwd) as (url, _):
            for c in args.clients:
                r = measure(url, bodies, args.scale, c, args.seconds, args.max_requests)
                rows.append((name, r))
                print(f"{name} c={c}: {r['mp_s']:.3f} MP/s {r['statuses']}", flush=True)

    print("\n| server | clients | requests | statuses | output MP/s | vs whole image "
          "| vs same tiles | p50 s | p50 / whole call | p99 s | tile overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| whole image, no HTTP | - | - | - | {whole['mp_s']:.3f} | 1.00 | - | - | - | - "
          "| 1.00 |")
    if whole16:
        print(f"| whole image, OpenVINO bf16, no HTTP | - | - | - | {whole16['mp_s']:.3f} | "
              f"{whole16['mp_s'] / whole['mp_s']:.2f} | - | - | "
              f"{whole16['call_p50'] / whole['call_p50']:.2f} | - | 1.00 |")
    print(f"| same tiles ({tiles['runtime']}), no HTTP | - | - | - | {tiles['mp_s']:.3f} | "
          f"{tiles['mp_s'] / whole['mp_s']:.2f} | 1.00 | - | - | - | - |")
    for name, r in rows:
        statuses = " ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        print(f"| {name} | {r['clients']} | {r['requests']} | {statuses} | {r['mp_s']:.3f} | "
              f"{r['mp_s'] / whole['mp_s']:.2f} | {r['mp_s'] / tiles['mp_s']:.2f} | "
              f"{r['p50']:.3f} | {r['p50'] / whole['call_p50']:.2f} | {r['p99']:.3f} | "
              f"{r['overhead']:.3f} |")


if __name__ == "__main__":
    main()
