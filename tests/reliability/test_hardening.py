"""Against a real server on 127.0.0.1, what a hostile client found: a head too long in one
write, a DNS-rebinding page, a stranger's origin, a cut-off multipart body, a thousand-image
v2 batch, a huge JSON tensor and huge headers. Each gets its 4xx at once, memory stays in
proportion, and /health/live keeps answering meanwhile. Heavy: `pytest -m heavy`."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.reliability.corpus import good_png
from tests.server import start_server

pytestmark = pytest.mark.heavy
LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    env = {"LSRCNN_TILE_SIZE": "48", "LSRCNN_CORS_ORIGINS": "http://good.example:8080"}
    proc, url = start_server("app", env, timeout_s=120)
    try:
        yield url, proc.pid
    finally:
        proc.kill()
        proc.wait()


def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _rss_kb(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(key)


class LiveProbe:
    """Polls /health/live from a thread; the slowest answer while a request runs."""

    def __init__(self, url: str) -> None:
        self.url, self.worst, self._stop = url, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                assert c.get(f"{self.url}/health/live").status_code == 200
                self.worst = max(self.worst, time.perf_counter() - t0)
                time.sleep(0.005)

    def __enter__(self) -> LiveProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_head_too_long_in_one_write_is_431(server: tuple[str, int]) -> None:
    url, _ = server
    head = (b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 +
            b"\r\n\r\n")
    answer = _raw(url, head)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert httpx.get(f"{url}/health/live").status_code == 200


def test_dns_rebinding_and_strangers_origins_are_refused(server: tuple[str, int]) -> None:
    url, _ = server
    port = url.rsplit(":", 1)[1]
    png = {"content-type": "image/png"}
    r = httpx.post(f"{url}/upscale", content=good_png(), headers={
        **png, "Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"})
    assert r.status_code == 400 and "Host" in r.json()["error"]
    r = httpx.get(f"{url}/health/live", headers={"Host": "evil.example"})
    assert r.status_code == 400
    # An allowed host, but a stranger's origin, or the allowed origin on another port.
    for origin in ("http://evil.example", "http://good.example:9090",
                   "https://good.example:8080"):
        r = httpx.post(f"{url}/upscale", content=good_png(), headers={**png, "Origin": origin})
        assert r.status_code == 403, origin
    for origin in ("http://good.example:8080", f"http://127.0.0.1:{port}"):
        r = httpx.post(f"{url}/upscale", content=good_png(), headers={**png, "Origin": origin})
        assert r.status_code == 200, (origin, r.text)


def test_a_cut_off_multipart_body_is_400(server: tuple[str, int]) -> None:
    url, _ = server
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + good_png())
    r = httpx.post(f"{url}/upscale", content=body,
                   headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400 and "closing boundary" in r.json()["error"], r.text


def test_a_thousand_image_batch_is_refused_at_once_and_health_answers(
        server: tuple[str, int]) -> None:
    url, _ = server
    n = 2048
    raw = np.full((n, 1, 1, 1), 0.5, "<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": [n, 1, 1, 1], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    with LiveProbe(url) as probe:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v2/models/lsrcnn-lite-x2/infer", content=header + raw,
                       headers={LENGTH: str(len(header)),
                                "content-type": "application/octet-stream"}, timeout=60)
        took = time.perf_counter() - t0
        # The largest batch allowed, as one unit of work: served, health answering.
        n = 64
        raw = np.full((n, 1, 8, 8), 0.5, "<f4").tobytes()
        header = json.dumps({"inputs": [{"name": "input", "shape": [n, 1, 8, 8],
                                         "datatype": "FP32",
                                         "parameters": {"binary_data_size": len(raw)}}],
                             "outputs": [{"name": "output",
                                          "parameters": {"binary_data": True}}]}).encode()
        ok = httpx.post(f"{url}/v2/models/lsrcnn-lite-x2/infer", content=header + raw,
                        headers={LENGTH: str(len(header)),
                                 "content-type": "application/octet-stream"}, timeout=60)
    assert r.status_code == 413 and "LSRCNN_MAX_BATCH_IMAGES" in r.json()["error"]
    assert took < 1.0, took
    assert ok.status_code == 200, ok.text[:200]
    # A loaded CI machine is allowed more than the 50 ms measured on a quiet one.
    assert probe.worst < 0.5, probe.worst


def test_a_32_mb_json_tensor_is_refused_in_proportion(server: tuple[str, int]) -> None:
    url, pid = server
    side = 2828  # 8 M values: far over the JSON cap of 2^20
    values = ",".join(["0.5"] * (side * side))
    body = ('{"inputs":[{"name":"input","shape":[1,1,' + f"{side},{side}" +
            '],"datatype":"FP32","data":[' + values + "]}]}").encode()
    assert len(body) > 30_000_000
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kb(pid)
    with LiveProbe(url) as probe:
        r = httpx.post(f"{url}/v2/models/lsrcnn-lite-x2/infer", content=body,
                       headers={"content-type": "application/json"}, timeout=60)
    peak = _rss_kb(pid, "VmHWM")
    assert r.status_code == 400 and "binary tensor extension" in r.json()["error"], r.text
    # The body itself is read (32 MB); the tensor is never built.
    assert (peak - before) * 1024 < 4 * len(body), (before, peak)
    assert probe.worst < 0.5, probe.worst
    assert os.path.exists(f"/proc/{pid}")


def test_fifty_parallel_jobs_never_take_the_spool_over_its_cap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The hostile client's run: 50 small jobs at once against a 3 MB cap. The spool's
    size on disk (du) and the metric stay under the cap all along."""
    import asyncio

    from tests.server import metric

    cap = 3_000_000
    spool = tmp_path / "spool"
    env = {"LSRCNN_TILE_SIZE": "48", "LSRCNN_SPOOL_MAX_BYTES": str(cap),
           "LSRCNN_SPOOL_DIR": str(spool)}
    proc, url = start_server("app", env, timeout_s=120)
    worst = {"disk": 0, "metric": 0.0}
    body = good_png()

    def disk() -> int:
        return sum(p.stat().st_size for p in spool.rglob("*") if p.is_file())

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as c:
            async def watch() -> None:
                while True:
                    worst["disk"] = max(worst["disk"], disk())
                    text = (await c.get(f"{url}/metrics")).text
                    worst["metric"] = max(worst["metric"], metric(text, "lsrcnn_spool_bytes"))
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            answers = await asyncio.gather(*[
                c.post(f"{url}/v1/jobs?scale=4", content=body,
                       headers={"content-type": "image/png"}) for _ in range(50)])
            for _ in range(600):  # until every accepted job is done
                if not [r for r in answers if r.status_code == 202 and (await c.get(
                        f"{url}/v1/jobs/{r.json()['id']}")).json()["status"] != "done"]:
                    break
                await asyncio.sleep(0.1)
            watcher.cancel()
            return [r.status_code for r in answers]

    try:
        codes = asyncio.run(main())
    finally:
        proc.kill()
        proc.wait()
    assert set(codes) <= {202, 503} and 202 in codes and 503 in codes, codes
    assert worst["disk"] <= cap and worst["metric"] <= cap, worst
