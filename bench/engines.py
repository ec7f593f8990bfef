"""CPU runtimes side by side, and the ceilings they run against: `python -m bench.engines
[--images Set14/] [--scale 2] [--crop 256] [--seconds 4]`.

1. GEMM ceilings: one 1024x1024x1024 MatMul compiled by OpenVINO at fp32 and at bf16, on 1
   thread and on every core, best of 5 (multiply-adds/s): what the processor gives a dense
   kernel at each precision, measured with the runtime the service uses.
2. The service's shape, tuned as a whole: for each runtime and precision (ONNX Runtime fp32,
   OpenVINO fp32 and bf16), workers x threads per worker (OpenVINO: one compiled model, a
   stream and an infer request per worker), tile size and tiles per call, the centre crops'
   tile plans run by that many workers for `--seconds`: output megapixels/s, and the
   multiply-adds/s that is (the card's MACs per LR pixel x LR pixels of the tiles, overlap
   included) against the ceiling at the same precision and thread count.
Prints the processor's flags and markdown tables (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app.images import imaging
from app.runtime import runners, tiling
from app.runtime.engine import Engine
from app.runtime.runners import BF16, FP32, OV_PRECISION, OpenVinoRunner, OrtRunner
from app.settings import Settings
from bench.load import load_images
from model import contract

ROOT = Path(__file__).resolve().parent.parent


def cpu_flags() -> str:
    """The model name and the flags that matter here, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    keep = [f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma", "avx_vnni"))]
    return f"{model}; flags: {' '.join(sorted(keep))}"


def gemm_ceiling(precision: str, threads: int, n: int = 1024) -> float:
    """Multiply-adds/s of an n^3 MatMul compiled by OpenVINO (best of 5 calls)."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32)
    b = ops.constant(rng.random((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a])
    compiled = ov.Core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads)})
    request, x = compiled.create_infer_request(), rng.random((n, n), dtype=np.float32)
    request.infer({0: x})
    best = min(_timed(lambda: request.infer({0: x})) for _ in range(5))
    return n**3 / best


def _timed(call) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def tiles_of(images: list, tile: int, overlap: int, batch: int) -> list[np.ndarray]:
    """Every crop's tile plan as model inputs, `batch` tiles of one shape a call."""
    calls: list[np.ndarray] = []
    for img in images:
        y = contract.to_model(imaging.split(img).y)
        plan = tiling.plan_tiles(img.height, img.width, tile, overlap)
        cut = [tiling.cut(y, plan, r, c) for r, c in plan.tiles()]
        by_shape: dict[tuple, list] = {}
        for t in cut:
            by_shape.setdefault(t.shape, []).append(t)
        for group in by_shape.values():
            for i in range(0, len(group), batch):
                calls.append(np.stack(group[i:i + batch])[:, None])
    return calls


def throughput(run, calls: list[np.ndarray], workers: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Rounds of every call, `workers` at once, for `seconds`: rounds per second."""
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, calls))
        rounds, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or rounds == 0:
            list(pool.map(run, calls))
            rounds += 1
        return rounds / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", default=str(ROOT / "tests" / "data" / "Set5"))
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--tiles", type=int, nargs="+", default=[112, 176, 240])
    args = p.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {platform.machine()}, {cores} cores, {platform.platform()}")
    print(f"cpu: {cpu_flags()}")
    print(f"openvino {runners.openvino_version()}, capabilities "
          f"{sorted(runners.cpu_capabilities())}\n", flush=True)

    precisions = [FP32] + ([BF16] if "BF16" in runners.cpu_capabilities() else [])
    ceiling = {(pr, t): gemm_ceiling(pr, t) for pr in precisions for t in sorted({1, cores})}
    print("| GEMM 1024^3 (OpenVINO) | " + " | ".join(f"{t} thread(s)" for t in
                                                      sorted({1, cores})) + " |")
    print("|---|" + "---|" * len(sorted({1, cores})))
    for pr in precisions:
        print(f"| {pr} | " + " | ".join(f"{ceiling[(pr, t)] / 1e9:.1f} GMAC/s"
                                        for t in sorted({1, cores})) + " |")
    print(flush=True)

    engine = Engine(Settings(engine="onnxruntime"))
    engine.load()
    name = engine.model_for(args.scale)
    info = engine.models[name]
    macs = float(info.card()["macs_per_lr_pixel"])
    images = load_images(args.images, args.crop)
    out_px = sum(img.width * img.height for img in images) * args.scale**2
    print(f"model {name}: {macs:.0f} MACs per LR pixel; {len(images)} crops of "
          f"{args.crop}x{args.crop} from {Path(args.images).name}\n")

    def ort(threads: int) -> OrtRunner:
        e = Engine(Settings(engine="onnxruntime", intra_op_threads=threads, workers=1))
        e.load()
        return e.runners[name]  # type: ignore[return-value]

    setups = [(w, cores // w) for w in sorted({1, cores}) if cores // w >= 1]
    print("| runtime | workers x threads | tile | tiles a call | output MP/s | GMAC/s | "
          "of the ceiling |")
    print("|---|---|---|---|---|---|---|")
    best: dict[str, tuple[float, str]] = {}
    for runtime, pr in [("onnxruntime", FP32), *(("openvino", q) for q in precisions)]:
        for workers, threads in setups:
            runner = (ort(threads) if runtime == "onnxruntime" else
                      OpenVinoRunner(info.path, pr, workers, threads))
            for tile in args.tiles:
                for batch in (1, 2):
                    calls = tiles_of(images, tile, 4, batch)
                    lr_px = sum(c.shape[0] * c.shape[2] * c.shape[3] for c in calls)
                    rps = throughput(runner.run, calls, workers, args.seconds)
                    gmac = rps * lr_px * macs / 1e9
                    share = gmac * 1e9 / ceiling.get((pr, cores), float("nan"))
                    mp_s = rps * out_px / 1e6
                    label = f"{runtime} {pr}"
                    if mp_s > best.get(label, (0.0, ""))[0]:
                        best[label] = (mp_s, f"{workers}x{threads}, tile {tile}, batch {batch}")
                    print(f"| {label} | {workers} x {threads} | {tile} | {batch} | {mp_s:.3f} "
                          f"| {gmac:.1f} | {share:.0%} |", flush=True)
    base = best["onnxruntime fp32"][0]
    print("\n| runtime | best setup | output MP/s | vs ONNX Runtime fp32's best |")
    print("|---|---|---|---|")
    for label, (mp_s, setup) in best.items():
        print(f"| {label} | {setup} | {mp_s:.3f} | {mp_s / base:.2f}x |")


if __name__ == "__main__":
    main()
