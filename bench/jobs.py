"""Jobs benchmark: what the jobs API costs over `/upscale`, and what a big job does to the
latency of requests beside it.

    python -m bench.jobs [--image tests/data/Set5/baby.png] [--rounds 5] [--big 4000]
                         [--probe 256] [--probes 10]
    python -m bench.jobs --eta 2000 [--eta-scales 2 4]

1. Overhead: the same image upscaled x2 `rounds` times each way, one at a time: POST
   /upscale (until the last byte), and POST /v1/jobs, polling its status every 50 ms, then
   GET the result. Reports medians and the difference.
2. Interference: `probes` requests of a probe x probe crop, one at a time, alone; then the
   same while a big x big job runs (the job is deleted afterwards). Reports medians and the
   ratio.
3. With `--eta SIDE` (instead of 1 and 2): the truth of `eta_s`. A SIDE x SIDE job per
   scale, polled every 50 ms; once it is done, each poll's `eta_s` against the time that
   really remained. Reports the largest error after the first 10% of tiles (target: 30%).
A uvicorn subprocess on 127.0.0.1 with the default settings.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import httpx
from PIL import Image

from bench.load import ROOT, server

PNG = {"content-type": "image/png"}


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _sync(http: httpx.Client, data: bytes) -> float:
    t0 = time.perf_counter()
    r = http.post("/upscale?scale=2", content=data, headers=PNG)
    r.raise_for_status()
    return time.perf_counter() - t0


def _job(http: httpx.Client, data: bytes) -> float:
    t0 = time.perf_counter()
    r = http.post("/v1/jobs?scale=2", content=data, headers=PNG)
    assert r.status_code == 202, r.text
    where = r.headers["location"]
    while (view := http.get(where).json())["status"] in ("queued", "running"):
        time.sleep(0.05)
    assert view["status"] == "done", view
    http.get(view["result_url"]).raise_for_status()
    elapsed = time.perf_counter() - t0
    http.delete(where)
    return elapsed


def eta_truth(http: httpx.Client, big: bytes, scale: int) -> dict:
    """One job's `eta_s` at each poll against the time that really remained."""
    r = http.post(f"/v1/jobs?scale={scale}&kind=clean", content=big,
                  headers={"content-type": "image/jpeg"})
    assert r.status_code == 202, r.text
    where, polls = r.headers["location"], []
    while (view := http.get(where).json())["status"] in ("queued", "running"):
        polls.append((time.perf_counter(), view["progress"], view["eta_s"]))
        time.sleep(0.05)  # finely: the poll's own delay counts as time left
    end = time.perf_counter()
    assert view["status"] == "done", view
    http.delete(where)
    errors = [(p, eta, end - t) for t, p, eta in polls if p >= 0.1 and end - t > 1.0]
    worst = max(errors, key=lambda e: abs(e[1] / e[2] - 1))
    return {"seconds": end - polls[0][0], "tiles": view["tiles_total"], "polls": len(errors),
            "worst": abs(worst[1] / worst[2] - 1), "at": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default=str(ROOT / "tests/data/Set5/baby.png"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--big", type=int, default=4000, help="side of the big job's input")
    ap.add_argument("--probe", type=int, default=256, help="side of the probe requests")
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--eta", type=int, default=0, help="measure eta_s on a job of this side")
    ap.add_argument("--eta-scales", type=int, nargs="+", default=[2, 4])
    args = ap.parse_args()
    src = Image.open(args.image).convert("RGB")
    if args.eta:
        job = _png(src.resize((args.eta, args.eta), Image.Resampling.BICUBIC), "JPEG")
        with server() as (url, _), httpx.Client(base_url=url, timeout=600) as http:
            for scale in args.eta_scales:
                r = eta_truth(http, job, scale)
                p, eta, left = r["at"]
                print(f"{args.eta}x{args.eta} x{scale}: {r['tiles']} tiles, {r['seconds']:.1f} s;"
                      f" after 10% of tiles, {r['polls']} polls: largest eta_s error "
                      f"{r['worst']:.0%} (at {p:.0%}: {eta:.1f} s shown, {left:.1f} s left)",
                      flush=True)
        return
    data = _png(src)
    probe = _png(src.crop((0, 0, args.probe, args.probe)))
    # Smooth content (an enlarged photo) as JPEG keeps the big input under the body limit.
    big = _png(src.resize((args.big, args.big), Image.Resampling.BICUBIC), "JPEG")
    with server() as (url, _), httpx.Client(base_url=url, timeout=600) as http:
        _sync(http, data)  # warm the connection and the caches
        sync = [_sync(http, data) for _ in range(args.rounds)]
        job = [_job(http, data) for _ in range(args.rounds)]
        s, j = statistics.median(sync), statistics.median(job)
        print(f"{Path(args.image).name} {src.width}x{src.height} x2, median of {args.rounds}:")
        print(f"  /upscale {s:.3f} s   job (submit, poll every 50 ms, fetch) {j:.3f} s   "
              f"overhead {j - s:+.3f} s ({(j / s - 1) * 100:+.0f}%)")

        alone = [_sync(http, probe) for _ in range(args.probes)]
        r = http.post("/v1/jobs?scale=2", content=big, headers={"content-type": "image/jpeg"})
        assert r.status_code == 202, r.text
        where = r.headers["location"]
        while (view := http.get(where).json())["tiles_done"] < 2:
            assert view["status"] in ("queued", "running"), view
            time.sleep(0.1)
        during = [_sync(http, probe) for _ in range(args.probes)]
        view = http.get(where).json()
        http.delete(where)
        a, d = statistics.median(alone), statistics.median(during)
        print(f"{args.probe}x{args.probe} x2 requests, median of {args.probes}: alone "
              f"{a:.3f} s, during a {args.big}x{args.big} job {d:.3f} s (max "
              f"{max(during):.3f} s): {d / a:.2f}x; the job was at tile "
              f"{view['tiles_done']} of {view['tiles_total']}, still {view['status']}")


if __name__ == "__main__":
    main()
