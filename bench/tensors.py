"""v2 infer: peak memory against the tensor's size, and health answering meanwhile.

    python -m bench.tensors [--binary-side 1024] [--json-side 512]

A real service on 127.0.0.1; for a binary tensor and a JSON one (at the JSON cap), x2, its
peak RSS rise (VmHWM after `clear_refs`) against the body (binary) or the decoded float32
bytes (JSON), and the slowest /health/live answer while the request runs; then the same
answer time while a batch of 2,048 1x1 images is refused and while one of 64 is served.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import httpx
import numpy as np

from tests.server import start_server

LENGTH = "Inference-Header-Content-Length"


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _worst_live(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.get(f"{url}/health/live")
            out.append(time.perf_counter() - t0)
            time.sleep(0.005)


def measure(url: str, pid: int, body: bytes, headers: dict[str, str]) -> tuple[int, float, float]:
    """(status, peak RSS rise in bytes, slowest health answer in seconds)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb(pid, "VmRSS")
    stop, lat = threading.Event(), []
    probe = threading.Thread(target=_worst_live, args=(url, stop, lat))
    probe.start()
    r = httpx.post(f"{url}/v2/models/lsrcnn-lite-x2/infer", content=body, headers=headers,
                   timeout=300)
    stop.set()
    probe.join()
    return r.status_code, (_status_kb(pid, "VmHWM") - before) * 1024, max(lat or [0.0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--binary-side", type=int, default=1024)
    p.add_argument("--json-side", type=int, default=512)
    args = p.parse_args()
    proc, url = start_server("app", {"LSRCNN_LOG_LEVEL": "warning"})
    try:
        s = args.binary_side
        raw = np.random.default_rng(0).random((1, 1, s, s), dtype=np.float32).tobytes()
        header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, s, s],
                                         "datatype": "FP32",
                                         "parameters": {"binary_data_size": len(raw)}}],
                             "outputs": [{"name": "output",
                                          "parameters": {"binary_data": True}}]}).encode()
        binary = measure(url, proc.pid, header + raw, {
            LENGTH: str(len(header)), "content-type": "application/octet-stream"})
        j = args.json_side
        values = np.random.default_rng(1).random(j * j).round(4).tolist()
        doc = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, j, j],
                                      "datatype": "FP32", "data": values}],
                          "outputs": [{"name": "output", "parameters": {"binary_data": True}}]
                          }).encode()
        jsoned = measure(url, proc.pid, doc, {"content-type": "application/json"})
        batches = []
        for n in (2048, 64):
            raw1 = np.full((n, 1, 1, 1), 0.5, "<f4").tobytes()
            head = json.dumps({"inputs": [{"name": "input", "shape": [n, 1, 1, 1],
                                           "datatype": "FP32",
                                           "parameters": {"binary_data_size": len(raw1)}}]}
                              ).encode()
            t0 = time.perf_counter()
            status, _, live = measure(url, proc.pid, head + raw1, {
                LENGTH: str(len(head)), "content-type": "application/octet-stream"})
            batches.append((n, status, time.perf_counter() - t0, live))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print("| request | body | status | peak RSS rise | / size | slowest /health/live |")
    print("|---|---|---|---|---|---|")
    for name, body_len, size, (status, rise, live) in (
            (f"binary [1,1,{s},{s}]", len(header) + len(raw), len(header) + len(raw), binary),
            (f"JSON [1,1,{j},{j}]", len(doc), j * j * 4, jsoned)):
        print(f"| {name} | {body_len / 1e6:.1f} MB | {status} | {rise / 1e6:.1f} MB | "
              f"{rise / size:.2f}x {'the body' if 'binary' in name else 'the float32 bytes'} "
              f"| {live * 1000:.0f} ms |")
    print("\n| batch | status | answered in | slowest /health/live |\n|---|---|---|---|")
    for n, status, took, live in batches:
        print(f"| {n} images of 1x1 | {status} | {took * 1000:.0f} ms | {live * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
