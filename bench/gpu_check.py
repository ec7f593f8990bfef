"""The GPU check: one run on a machine with an NVIDIA GPU, everything it writes in one folder.

    python -m bench.gpu_check --wheel onnxruntime_gpu-*.whl --out gpu-check [--minutes 4]
                              [--data T91/ BSDS200/] [--val tests/data/Set5]
    python -m bench.gpu_check --dry-run --out gpu-check-dry       # CPU only, seconds (CI)

1. installs the `onnxruntime-gpu` wheel with `pip install --no-deps --target OUT/ort-gpu`
   (its dependencies are the CPU build's, already installed), puts it first on the path
   and calls `onnxruntime.preload_dlls()` (CUDA and cuDNN from their pip packages, where
   installed);
2. asserts that a session really runs on the CUDA provider (`get_providers()`, not the
   list of available ones);
3. runs every bundled model on the Set5 images on CUDA and on the CPU: max |diff| <= 1e-3;
4. measures both presets' throughput (random weights: speed does not depend on them) at
   several batch sizes of the GPU tile shape;
5. trains the `lsrcnn` preset at x2 for `--minutes`, exports it (with the exporter's parity
   check) and evaluates it on the validation images.

Writes OUT/summary.json and OUT/summary.md (plus the wheel's install, the training run and
the exported model). `--dry-run` runs every step on the CPU with tiny sizes and no install,
so CI proves the script works. Needs the train extra (torch) for steps 4 and 5.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SET5 = ROOT / "tests" / "data" / "Set5"
WEIGHTS = ROOT / "model" / "weights"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
PARITY_TOLERANCE = 1e-3


class CheckFailed(AssertionError):
    pass


def install(wheel: Path, out: Path) -> Path:
    """The GPU build into its own folder, first on the path; nothing else is touched."""
    target = out / "ort-gpu"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--target", str(target), "--upgrade", str(wheel)], check=True)
    if "onnxruntime" in sys.modules:
        raise CheckFailed("onnxruntime was imported before the GPU build was installed")
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return target


def load_runtime(dry_run: bool) -> Any:
    import onnxruntime as ort

    if not dry_run:
        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            raise CheckFailed(f"onnxruntime {ort.__version__} has no preload_dlls (1.21+)")
        preload()
    return ort


def check_active(ort: Any, provider: str, settings: Any) -> dict:
    """A session asked for CUDA must report it active (the build's list proves nothing)."""
    from app.runtime import device, registry

    path = registry.find(WEIGHTS, 2).path
    session = ort.InferenceSession(str(path), providers=device.requested(
        settings, ort.get_available_providers()))
    active = session.get_providers()
    result = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(),
              "active": active, "expected": provider}
    if active[0] != provider:
        raise CheckFailed(f"a session runs on {active[0]}, expected {provider}: {result}")
    return result


def check_parity(ort: Any, provider: str, settings: Any, images: Path) -> dict:
    """Every bundled model on every image, on `provider` and on the CPU."""
    from app.runtime import device, registry
    from model import contract
    from model.imaging import bicubic_down, list_images, load_rgb, modcrop, y_of

    worst: dict[str, float] = {}
    for f in registry.discover(WEIGHTS):
        gpu = ort.InferenceSession(str(f.path), providers=device.requested(
            settings, ort.get_available_providers()) if provider == CUDA else [CPU])
        cpu = ort.InferenceSession(str(f.path), providers=[CPU])
        diffs = []
        for path in list_images(images):
            hr = modcrop(load_rgb(path), f.descriptor.scale)
            x = contract.to_model(y_of(bicubic_down(hr, f.descriptor.scale)))[None, None]
            a = gpu.run(None, {contract.INPUT_NAME: x})[0]
            b = cpu.run(None, {contract.INPUT_NAME: x})[0]
            diffs.append(float(np.abs(a - b).max()))
        worst[f.name] = max(diffs)
    bad = {k: v for k, v in worst.items() if v > PARITY_TOLERANCE}
    if bad:
        raise CheckFailed(f"{provider} differs from the CPU beyond {PARITY_TOLERANCE}: {bad}")
    return {"max_abs_diff": worst, "tolerance": PARITY_TOLERANCE, "images": images.name}


def throughput(ort: Any, provider: str, settings: Any, out: Path, side: int,
               batches: list[int], seconds: float) -> list[dict]:
    """Tiles per second of each preset at each batch size, `side` x `side` tiles."""
    import torch

    from app.runtime import device
    from model import contract
    from model.export import export
    from model.net import LSRCNN, PRESETS, make_config

    torch.manual_seed(0)
    rows = []
    for preset in sorted(PRESETS):
        path = out / f"speed-{preset}-x2.onnx"
        export(LSRCNN(make_config(preset, 2)), path,
               contract.ModelDescriptor(2, preset).metadata())
        providers = device.requested(settings, ort.get_available_providers()) \
            if provider == CUDA else [CPU]
        session = ort.InferenceSession(str(path), providers=providers)
        for n in batches:
            x = np.random.default_rng(n).random((n, 1, side, side), dtype=np.float32)
            session.run(None, {contract.INPUT_NAME: x})  # the first call per shape searches
            calls: list[float] = []
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds or len(calls) < 2:
                t = time.perf_counter()
                session.run(None, {contract.INPUT_NAME: x})
                calls.append(time.perf_counter() - t)
            call = statistics.median(calls)
            rows.append({"preset": preset, "batch": n, "tile": side, "s_per_call": call,
                         "tiles_per_s": n / call, "lr_mp_per_s": n * side * side / call / 1e6})
    return rows


def small_crops(src: Path, out: Path, side: int = 64, count: int = 2) -> Path:
    """A few crops of the validation images: the dry run validates in seconds."""
    from model.imaging import list_images, load_rgb

    out.mkdir(parents=True, exist_ok=True)
    for path in list_images(src)[:count]:
        load_rgb(path).crop((0, 0, side, side)).save(out / f"{path.stem}.png")
    return out


def train_export_evaluate(out: Path, data: list[str], val: Path, minutes: float,
                          dry_run: bool) -> dict:
    """The full preset at x2 for `minutes`, exported and scored on the validation images."""
    from model import evaluate, export, train

    if dry_run:
        val = small_crops(val, out / "val-crops")
    run = out / "train-lsrcnn-x2"
    small = ["--hidden", "8", "--iters", "2", "--batch", "2", "--patch", "16"] if dry_run \
        else ["--iters", "100000", "--minutes", str(minutes)]
    train.main(["--preset", "lsrcnn", "--scale", "2", "--data", *data, "--val", str(val),
                "--out", str(run), "--val-every", "250", *small])
    onnx_path = out / "lsrcnn-x2.onnx"
    export.main([str(run / "best.pt"), str(onnx_path)])
    scores = out / "evaluation.json"
    evaluate.main([str(val), "--scale", "2", "--model", str(onnx_path), "--json", str(scores)])
    ckpt = train.load_checkpoint(run / "best.pt")
    return {"iterations": ckpt["iteration"], "train_seconds": ckpt["wall_time"],
            "device": ckpt["train"]["device"], "val_psnr": ckpt["val_psnr"],
            "scores": json.loads(scores.read_text())}


def markdown(summary: dict) -> str:
    parity = summary["parity"] or {}
    lines = [f"# GPU check ({'dry run, CPU' if summary['dry_run'] else 'CUDA'})", "",
             f"- provider: {summary['provider']['active'][0]} "
             f"(onnxruntime {summary['provider']['onnxruntime']})",
             f"- parity with the CPU (max |diff|): {parity.get('max_abs_diff')}", "",
             "| preset | batch | tile | s / call | tiles / s | LR MP / s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['batch']} | {r['tile']} | {r['s_per_call']:.4f} | "
              f"{r['tiles_per_s']:.1f} | {r['lr_mp_per_s']:.2f} |"
              for r in summary["throughput"] or []]
    if t := summary["training"]:
        lines += ["", f"- lsrcnn x2: {t['iterations']} steps in {t['train_seconds']:.0f} s "
                  f"on {t['device']}, validation PSNR {t['val_psnr']:.2f} dB"]
        lines += [f"- {s['method']} on {s['dataset']}: {s['psnr']:.2f} dB / {s['ssim']:.4f}"
                  for s in t["scores"]]
    if summary["failures"]:
        lines += ["", "FAILED:", *[f"- {f}" for f in summary["failures"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, help="the onnxruntime-gpu wheel to install")
    p.add_argument("--out", type=Path, required=True, help="folder for everything written")
    p.add_argument("--minutes", type=float, default=4.0, help="training time of step 5")
    p.add_argument("--data", nargs="+", default=[str(SET5)], help="HR training images")
    p.add_argument("--val", type=Path, default=SET5, help="HR validation images")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--dry-run", action="store_true", help="CPU only, tiny sizes, no install")
    args = p.parse_args(argv)
    if not args.dry_run and args.wheel is None:
        p.error("--wheel is required unless --dry-run")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not args.dry_run:
        install(args.wheel, args.out)
    ort = load_runtime(args.dry_run)
    from app.settings import Settings

    settings = Settings(providers="cpu" if args.dry_run else "cuda")
    provider = CPU if args.dry_run else CUDA
    summary: dict[str, Any] = {"dry_run": args.dry_run, "machine": platform.node(),
                               "failures": []}
    summary["provider"] = check_active(ort, provider, settings)  # nothing else counts without it
    steps = {
        "parity": lambda: check_parity(ort, provider, settings, SET5),
        "throughput": lambda: throughput(
            ort, provider, settings, args.out, 32 if args.dry_run else 192,
            [1, 2] if args.dry_run else args.batches, 0.2 if args.dry_run else 3.0),
        "training": lambda: train_export_evaluate(args.out, args.data, args.val, args.minutes,
                                                  args.dry_run),
    }
    for name, step in steps.items():
        try:
            summary[name] = step()
        except Exception as err:  # one failed step does not hide the others' results
            summary["failures"].append(f"{name}: {err!r}")
            summary[name] = None
    summary["seconds"] = time.perf_counter() - t0
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (args.out / "summary.md").write_text(markdown(summary))
    print(json.dumps({k: summary[k] for k in ("provider", "failures", "seconds")}, default=str))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
