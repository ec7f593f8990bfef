"""Train LSRCNN: `python -m model.train --preset lsrcnn-lite --scale 2 --data DIR [DIR ...]`,
or reproduce a shipped model: `python -m model.train --recipe model/recipes/NAME.toml
--datasets ROOT` (ROOT holds the recipe's named data sets, e.g. ROOT/T91 or ROOT/*/T91).

Checkpoints carry their config, optimizer and sampler state, so `--resume` continues a run
exactly and `model.export` needs no flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model import contract
from model.contract import from_model, rgb_to_y, to_model
from model.data import PatchSampler
from model.degrade import PRESETS as DEGRADATIONS
from model.degrade import Chain, Degradations, parse_chain
from model.imaging import list_images, load_rgb, modcrop
from model.net import LSRCNN, LSRCNNConfig, make_config
from model.quality import psnr, quantize

log = logging.getLogger("model.train")


RECIPE_KEYS = {"kind", "strength", "preset", "scale", "attention", "hidden", "data", "val",
               "val_degrade", "iters", "batch", "patch", "lr", "schedule", "min_lr", "warmup",
               "loss", "clip", "seed", "init", "degrade", "degradations", "notes"}


def read_recipe(path: str | Path) -> dict:
    """A recipe file: the training options of one shipped model, as TOML."""
    recipe = tomllib.loads(Path(path).read_text())
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise SystemExit(f"{path}: unknown recipe keys {sorted(unknown)}")
    return recipe


def find_dataset(name: str, root: Path) -> str:
    """ROOT/NAME, or ROOT/<any>/NAME: recipes name data sets, not paths of one machine."""
    for candidate in (root / name, *sorted(root.glob(f"*/{name}"))):
        if candidate.is_dir():
            return str(candidate)
    raise SystemExit(f"data set {name!r} not found under {root}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipe", default=None, help="a TOML recipe: its keys set the options "
                   "below (flags given too win); data set names resolve under --datasets")
    p.add_argument("--datasets", default=None, help="folder holding the recipe's data sets")
    p.add_argument("--kind", default="clean", help="clean | photo: what the model is for")
    p.add_argument("--strength", default="", choices=contract.STRENGTHS,
                   help="a photo model's specialisation: mild, medium or strong compression")
    p.add_argument("--preset", default="lsrcnn-lite", help="lsrcnn | lsrcnn-lite")
    p.add_argument("--scale", type=int, default=2, choices=(2, 3, 4))
    p.add_argument("--attention", default=None, help="override: none|channel|spatial|mixed")
    p.add_argument("--hidden", type=int, default=None, help="override the preset's LSTM size")
    p.add_argument("--data", nargs="+", default=None, help="folder(s) of HR training images")
    p.add_argument("--val", default=None, help="folder of HR validation images (e.g. Set5)")
    p.add_argument("--val-degrade", default="clean",
                   help="degradation of the validation LR, e.g. jpeg:75 (model.degrade)")
    p.add_argument("--degrade", default="clean", choices=sorted(DEGRADATIONS),
                   help="the training LR's degradation distribution")
    p.add_argument("--degradations", default=None,
                   help="JSON of Degradations fields overriding the --degrade preset's")
    p.add_argument("--out", default="runs/x2", help="run folder: last.pt, best.pt")
    p.add_argument("--iters", type=int, default=10_000, help="total optimizer steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48, help="LR patch side")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate")
    p.add_argument("--schedule", default="cosine", choices=("cosine", "step", "constant"))
    p.add_argument("--min-lr", type=float, default=1e-5, help="floor of the cosine schedule")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--loss", default="l2", choices=("l2", "l1"), help="L2 is the design's")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (LSTM safety)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init", default=None,
                   help="checkpoint (.pt) or exported model (.onnx) whose tensors of the same "
                        "name and shape start this run (all of them at the same scale; "
                        "encoder and LSTM from another scale)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if present)")
    p.add_argument("--minutes", type=float, default=None,
                   help="also stop after this many minutes of training (the learning-rate "
                        "schedule still spans --iters)")
    args = p.parse_args(argv)
    if args.recipe:
        recipe = read_recipe(args.recipe)
        root = Path(args.datasets or ".")
        if isinstance(recipe.get("degradations"), dict):
            recipe["degradations"] = json.dumps(recipe["degradations"])
        recipe["data"] = [find_dataset(d, root) for d in recipe.get("data", [])]
        if recipe.get("val"):
            recipe["val"] = find_dataset(recipe["val"], root)
        recipe.pop("notes", None)
        p.set_defaults(**recipe)
        args = p.parse_args(argv)  # flags on the command line still win over the recipe
    if not args.data:
        p.error("give --data, or a --recipe with --datasets")
    return args


def degradations(args: argparse.Namespace) -> Degradations:
    base = DEGRADATIONS[args.degrade].to_dict()
    return Degradations.from_dict({**base, **json.loads(args.degradations or "{}")})


def learning_rate(args: argparse.Namespace, step: int) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.schedule == "constant":
        return args.lr
    if args.schedule == "step":  # halve at 50%, 75%, 90%
        return args.lr * 0.5 ** sum(step >= f * args.iters for f in (0.5, 0.75, 0.9))
    t = (step - args.warmup) / max(1, args.iters - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def validation_pairs(folder: str, scale: int, chain: Chain) -> list[tuple[np.ndarray, np.ndarray]]:
    """Y planes (0..255 scale) of each image's LR, degraded by `chain`, and modcropped HR."""
    pairs = []
    for i, path in enumerate(list_images(folder)):
        hr = np.asarray(modcrop(load_rgb(path), scale))
        pairs.append((rgb_to_y(chain.apply(hr, scale, i), np.float64),
                      rgb_to_y(hr, np.float64)))
    return pairs


@torch.no_grad()
def validate(model: LSRCNN, pairs: list[tuple[np.ndarray, np.ndarray]], device: str) -> float:
    """Mean Y PSNR (protocol: quantized output, border of `scale` pixels shaved)."""
    model.eval()
    scores = []
    for lr, hr in pairs:
        x = torch.from_numpy(to_model(lr))[None, None].to(device)
        sr = from_model(model(x)[0, 0].float().cpu().numpy())
        scores.append(psnr(quantize(sr), hr, border=model.cfg.scale))
    model.train()
    return float(np.mean(scores))


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def model_from_checkpoint(ckpt: dict) -> LSRCNN:
    model = LSRCNN(LSRCNNConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model


def init_from(model: LSRCNN, path: str) -> int:
    """Copy every tensor of the same name and shape from a checkpoint or an exported .onnx
    (all of a same-scale model; the encoder and LSTM of another scale's)."""
    if str(path).endswith(".onnx"):
        from model.onnx_weights import read_onnx
        src = read_onnx(path)[1]
    else:
        src = load_checkpoint(path)["model"]
    own = model.state_dict()
    keep = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
    return len(keep)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    cfg = make_config(args.preset, args.scale, attention=args.attention, hidden=args.hidden)
    model = LSRCNN(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    degr = degradations(args)
    sampler = PatchSampler(args.data, args.scale, args.patch, seed=args.seed, degradations=degr)
    val_chain = parse_chain(args.val_degrade)
    val_pairs = validation_pairs(args.val, args.scale, val_chain) if args.val else []
    log.info("%s x%d: %d params, %d training images, device %s", cfg.preset, cfg.scale,
             sum(p.numel() for p in model.parameters()), len(sampler), device)

    step, best, wall, val_psnr = 0, -1.0, 0.0, float("nan")
    last = out / "last.pt"
    if args.resume and last.exists():
        ckpt = load_checkpoint(last)
        if ckpt["config"] != cfg.to_dict():
            raise SystemExit(f"{last} was trained with another config: {ckpt['config']}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sampler.rng.bit_generator.state = ckpt["sampler_rng"]
        step, best, wall = ckpt["iteration"], ckpt["best_psnr"], ckpt["wall_time"]
        val_psnr = ckpt.get("val_psnr", float("nan"))
        log.info("resumed %s at step %d (best %.3f dB)", last, step, best)
    elif args.init:
        log.info("initialised %d tensors from %s", init_from(model, args.init), args.init)

    def save(path: Path) -> None:
        torch.save({
            "config": cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
            "iteration": step, "best_psnr": best, "val_psnr": val_psnr, "wall_time": wall,
            "sampler_rng": sampler.rng.bit_generator.state,
            "train": {"data": [Path(d).name for d in args.data], "batch": args.batch,
                      "patch": args.patch, "loss": args.loss, "lr": args.lr,
                      "schedule": args.schedule, "init": args.init and Path(args.init).name,
                      "iters": args.iters, "kind": args.kind, "strength": args.strength,
                      "degrade": args.degrade,
                      "degradations": degr.to_dict(), "val_degrade": val_chain.name,
                      "recipe": args.recipe and Path(args.recipe).name,
                      "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                      "val": Path(args.val).name if args.val else None},
        }, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # atomic: a killed run never leaves half a file

    loss_fn = F.mse_loss if args.loss == "l2" else F.l1_loss
    use_amp = device == "cuda"
    model.train()
    bar = tqdm(total=args.iters, initial=step, dynamic_ncols=True, desc=f"x{cfg.scale}")
    budget_s = math.inf if args.minutes is None else args.minutes * 60
    while step < args.iters and wall < budget_s:
        t0 = time.perf_counter()
        lr_np, hr_np = sampler.batch(args.batch)
        lr_t, hr_t = torch.from_numpy(lr_np).to(device), torch.from_numpy(hr_np).to(device)
        for g in opt.param_groups:
            g["lr"] = learning_rate(args, step)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fn(model(lr_t).float(), hr_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        wall += time.perf_counter() - t0
        last_step = step == args.iters or wall >= budget_s
        if val_pairs and (step % args.val_every == 0 or last_step):
            val_psnr = validate(model, val_pairs, device)
            if val_psnr > best:
                best = val_psnr
                save(out / "best.pt")
        if step % args.ckpt_every == 0 or last_step:
            save(last)
        bar.set_postfix(loss=f"{loss.item():.2e}", val=f"{val_psnr:.2f}", best=f"{best:.2f}")
        bar.update(1)
    bar.close()
    if not val_pairs:
        save(out / "best.pt")
    log.info("done: step %d, best validation PSNR %.3f dB, %.0f s of training", step, best, wall)


if __name__ == "__main__":
    main()
