"""Tile size and overlap: quality loss against whole-image inference, seams, and speed.

    python -m bench.tiling HR_DIR [HR_DIR ...] [--tiles 64 96 128] [--overlaps 4 8 12 16]

Quality: for each scale, the Y PSNR (evaluation protocol) of the service's tiled path
(app.tiling with the shipped ONNX model) against the same model on the whole image in one
call. Seams: mean |tiled - whole| on the output rows/columns at tile cuts, against the mean
elsewhere (a visible seam shows as a clearly larger mean at the cuts). Speed: engine tiles/s
and LR pixels/s of the tile cores for each tile size, batch size and number of calls in
flight (one call using every core, or one single-threaded call per core).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.runtime import registry, tiling
from model import contract
from model.evaluate import run_onnx
from model.imaging import bicubic_down, list_images, load_rgb, modcrop, y_of
from model.quality import psnr, quantize

WEIGHTS = Path(__file__).resolve().parent.parent / "model" / "weights"


def session(scale: int, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # Chosen by the scale its metadata states, never by its file name.
    return ort.InferenceSession(str(registry.find(WEIGHTS, scale).path), opts,
                                providers=["CPUExecutionProvider"])


def tiled(sess: ort.InferenceSession, lr_y: np.ndarray, scale: int, tile: int, overlap: int,
          min_tiles: int = 1,
          batch: int = 16) -> tuple[np.ndarray, tiling.TilePlan]:
    plan = tiling.plan_tiles(*lr_y.shape, tile, overlap, min_tiles)
    tiles = tiling.cut_tiles(contract.to_model(lr_y), plan)
    outs = [sess.run(None, {contract.INPUT_NAME: tiles[i : i + batch]})[0]
            for i in range(0, len(tiles), batch)]
    return contract.from_model(tiling.merge_tiles(np.concatenate(outs), plan, scale)), plan


def seam_levels(diff: np.ndarray, plan: tiling.TilePlan, scale: int) -> tuple[float, float]:
    """Mean |diff| (gray levels) on the two output lines either side of each cut, and elsewhere.

    A visible seam is a line where tiled and whole differ by a level or more on average.
    """
    mask = np.zeros(diff.shape, bool)
    for spans, axis in ((plan.rows, 0), (plan.cols, 1)):
        for s in spans[1:]:
            cut = s.core_lo * scale
            if axis == 0:
                mask[cut - 1 : cut + 1, :] = True
            else:
                mask[:, cut - 1 : cut + 1] = True
    return float(diff[mask].mean()), float(diff[~mask].mean())


def quality(folders: list[str], tiles: list[int], overlaps: list[int], min_tiles: int = 1
            ) -> None:
    print("| scale | dataset | tile | overlap | whole (dB) | tiled (dB) | loss (dB) "
          "| worst image loss | at cuts (levels) | elsewhere | max |diff| |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for scale in (2, 3, 4):
        sess = session(scale)
        for folder in folders:
            images = []
            for path in list_images(folder):
                hr = modcrop(load_rgb(path), scale)
                lr_y, hr_y = y_of(bicubic_down(hr, scale)), y_of(hr)
                images.append((lr_y, hr_y, run_onnx(sess, lr_y)))
            whole = np.mean([psnr(quantize(w), hr_y, scale) for _, hr_y, w in images])
            for tile in tiles:
                for overlap in overlaps:
                    if tile > 2 * overlap:
                        row = _compare(sess, images, scale, tile, overlap, min_tiles)
                        print(f"| x{scale} | {Path(folder).name} | {tile} | {overlap} | "
                              f"{whole:.3f} | {whole - row[0]:.3f} | {row[0]:.3f} | "
                              f"{row[1]:.3f} | {row[2]} | {row[3]:.2f} |", flush=True)


def _compare(sess: ort.InferenceSession, images: list, scale: int, tile: int, overlap: int,
             min_tiles: int = 1) -> tuple[float, float, str, float]:
    losses, at_cuts, rest, worst = [], [], [], 0.0
    for lr_y, hr_y, w_raw in images:
        out_raw, plan = tiled(sess, lr_y, scale, tile, overlap, min_tiles=min_tiles)
        losses.append(psnr(quantize(w_raw), hr_y, scale) - psnr(quantize(out_raw), hr_y, scale))
        diff = np.abs(out_raw - w_raw)  # unquantized: what the tiling changed
        worst = max(worst, float(diff.max()))
        if plan.count > 1:
            cut, other = seam_levels(diff, plan, scale)
            at_cuts.append(cut)
            rest.append(other)
    seam = f"{np.mean(at_cuts):.3f} | {np.mean(rest):.3f}" if at_cuts else "- | -"
    return float(np.mean(losses)), float(max(losses)), seam, worst


def speed(tiles: list[int], overlap: int, seconds: float) -> None:
    """Engine throughput per tile size, batch size, and calls in flight (workers x threads)."""
    cores = os.cpu_count() or 1
    configs = sorted({(1, cores), (cores, 1)})
    print("\n| tile | overlap | workers x threads | batch | tiles/s | core LR px/s |")
    print("|---|---|---|---|---|---|")
    for tile in tiles:
        core = (tile - 2 * overlap) ** 2
        for workers, threads in configs:
            sess = session(2, threads)
            for batch in (1, 4, 16):
                x = np.random.default_rng(0).random((batch, 1, tile, tile), dtype=np.float32)
                sess.run(None, {contract.INPUT_NAME: x})
                done = [0] * workers
                stop = time.perf_counter() + seconds

                def work(k: int, sess=sess, x=x, batch=batch, stop=stop, done=done) -> None:
                    while time.perf_counter() < stop:
                        sess.run(None, {contract.INPUT_NAME: x})
                        done[k] += batch

                t0 = time.perf_counter()
                threads_ = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
                for t in threads_:
                    t.start()
                for t in threads_:
                    t.join()
                rate = sum(done) / (time.perf_counter() - t0)
                print(f"| {tile} | {overlap} | {workers} x {threads} | {batch} | {rate:.1f} | "
                      f"{rate * core:,.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("folders", nargs="*", default=["tests/data/Set5"])
    p.add_argument("--tiles", type=int, nargs="+", default=[64, 96, 128])
    p.add_argument("--overlaps", type=int, nargs="+", default=[4, 8, 12, 16])
    p.add_argument("--speed-seconds", type=float, default=3.0)
    p.add_argument("--speed-overlap", type=int, default=8)
    p.add_argument("--min-tiles", type=int, default=1,
                   help="spread each image over at least this many tiles, as the service "
                   "does for a lone request")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    if not args.skip_quality:
        quality(args.folders, args.tiles, args.overlaps, args.min_tiles)
    if not args.skip_speed:
        speed(args.tiles, args.speed_overlap, args.speed_seconds)


if __name__ == "__main__":
    main()
