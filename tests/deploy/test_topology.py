"""Past one replica, for real, all on loopback: redis-server (append-only, fsync always), two
service processes sharing it (LSRCNN_JOBS_STORE), and HAProxy in round robin in front of
them with the shipped configuration (deploy/haproxy/haproxy.cfg), health-checking
/health/ready. Run by CI's `topology` stage (`pytest -m topology`), which installs
redis-server and haproxy; elsewhere it skips when they are absent.

One scenario, in order: 30 jobs through the balancer, all done with /upscale's pixels, run
by both replicas (each one's own metrics say so); kill -9 of the replica running a big job:
the other takes it over after the lease and finishes it, and requests through the balancer
go on meanwhile; DELETE answered by one replica stops the job the other runs; Redis killed
and restarted in the middle of a batch: no acknowledged job is lost.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from tests.conftest import WEIGHTS
from tests.helpers import noise, png_bytes, set5_crop
from tests.redis_server import RedisServer
from tests.server import ROOT, free_port, metric, start_server

pytestmark = [pytest.mark.topology]
PNG = {"content-type": "image/png"}
LEASE_S = 3.0


class Topology:
    def __init__(self, tmp: Path) -> None:
        for tool in ("haproxy", "redis-server"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is not installed (apt-get install {tool})") \
                    if os.environ.get("LSRCNN_REQUIRE_REDIS") == "1" \
                    else pytest.skip(f"{tool} is not installed")
        self.redis = RedisServer(tmp / "redis")
        models = tmp / "models"  # one model: the replicas start in seconds
        models.mkdir()
        shutil.copy(WEIGHTS / "lsrcnn-lite-x2.onnx", models)
        self.env = {"LSRCNN_JOBS_STORE": self.redis.url, "LSRCNN_JOB_LEASE_S": str(LEASE_S),
                    "LSRCNN_MODEL_DIR": str(models), "LSRCNN_WORKERS": "1"}
        # Each replica's log (appended across a restart), printed if the test fails.
        self.logs = [tmp / "replica1.log", tmp / "replica2.log"]
        self.ports = [free_port(), free_port()]
        self.procs: list[subprocess.Popen | None] = [None, None]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        for i in range(2):
            self.start(i)
        self.lb = f"http://127.0.0.1:{free_port()}"
        self.haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy" / "haproxy.cfg")],
            env={**os.environ, "LB_BIND": self.lb.removeprefix("http://"),
                 "REPLICA1": f"127.0.0.1:{self.ports[0]}",
                 "REPLICA2": f"127.0.0.1:{self.ports[1]}"},
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.until_both_up()

    def start(self, i: int) -> None:
        with open(self.logs[i], "ab") as log:
            self.procs[i], _ = start_server("app", self.env, port=self.ports[i],
                                            output=log.fileno())

    def print_logs(self) -> None:
        """What the replicas said about jobs and the store (pytest shows it on failure)."""
        for path in self.logs:
            lines = [line for line in path.read_text(errors="replace").splitlines()
                     if re.search(r"job|store|warn|error", line, re.IGNORECASE)]
            print(f"--- {path.name}, {len(lines)} lines about jobs, the last 80:")
            print("\n".join(lines[-80:]))

    def until_both_up(self) -> None:
        """Until the balancer has sent requests to both replicas (its checks passed)."""
        deadline, seen = time.monotonic() + 30, set()
        while len(seen) < 2:
            assert time.monotonic() < deadline, f"the balancer reached only {seen}"
            try:
                r = httpx.get(f"{self.lb}/health/ready", timeout=5)
                if r.status_code == 200:
                    seen.add(r.headers["x-served-by"])
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def replica_of(self, consumer: str) -> int:
        """Which replica a job's holder is (its name carries the process id)."""
        pid = int(consumer.split("-")[-2])
        return next(i for i, p in enumerate(self.procs) if p is not None and p.pid == pid)

    def close(self) -> None:
        for proc in [self.haproxy, *self.procs]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.redis.stop()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    t = Topology(tmp_path)
    try:
        yield t
    finally:
        t.close()
        t.print_logs()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def poll(c: httpx.Client, job_id: str, statuses: set[str], timeout_s: float = 180) -> dict:
    """The job's view once in `statuses`, polled through the balancer; 503s (the store
    restarting) are waited out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = c.get(f"/v1/jobs/{job_id}")
        if r.status_code == 200 and r.json()["status"] in statuses:
            return r.json()
        assert r.status_code in (200, 503), r.text
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {statuses}")


def submit(c: httpx.Client, data: bytes) -> str:
    for _ in range(100):
        r = c.post("/v1/jobs?scale=2", content=data, headers=PNG)
        if r.status_code != 503:
            break
        time.sleep(0.2)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def check_done(c: httpx.Client, job_id: str, data: bytes) -> None:
    view = poll(c, job_id, {"done", "failed", "cancelled"})
    assert view["status"] == "done", view
    got = c.get(f"/v1/jobs/{job_id}/result")
    assert got.status_code == 200
    want = c.post("/upscale?scale=2", content=data, headers=PNG)
    assert want.status_code == 200, want.text
    assert np.array_equal(pixels(got.content), pixels(want.content)), job_id


def test_two_replicas_behind_haproxy_share_jobs_and_lose_none(topology: Topology) -> None:
    t = topology
    names = ["baby", "bird", "butterfly", "head", "woman"]
    inputs = [png_bytes(set5_crop(names[i % 5], (8 * (i // 5), 0, 8 * (i // 5) + 72, 64)))
              for i in range(29)]
    big = [png_bytes(noise("RGB", 1400, 1400, seed=s)) for s in (1, 2)]
    store = redis.Redis.from_url(t.redis.url)
    with httpx.Client(base_url=t.lb, timeout=120) as c:
        # 1. Twenty-one jobs through the balancer: all done, /upscale's pixels, both replicas.
        ids = [submit(c, data) for data in inputs[:21]]
        for job_id, data in zip(ids, inputs[:21], strict=True):
            check_done(c, job_id, data)
        ran = [metric(httpx.get(f"{u}/metrics").text, "lsrcnn_jobs_finished_total",
                      status="done") for u in t.urls]
        assert all(n > 0 for n in ran) and sum(ran) == 21, ran

        # 2. kill -9 of the replica running a job: the other finishes it after the lease;
        # the balancer keeps answering meanwhile.
        victim_id = submit(c, big[0])
        view = poll(c, victim_id, {"running"})
        while view["tiles_done"] == 0:
            time.sleep(0.05)
            view = c.get(f"/v1/jobs/{victim_id}").json()
        dead = t.replica_of(view["replica"])
        t.procs[dead].send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        t.procs[dead].wait()  # type: ignore[union-attr]
        t.procs[dead] = None
        for data in inputs[20:23]:
            r = c.post("/upscale?scale=2", content=data, headers=PNG)
            assert r.status_code == 200, r.text
        ids.append(victim_id)
        check_done(c, victim_id, big[0])
        assert store.hget(f"lsrcnn:job:{victim_id}", "attempts") == b"2"
        alive = t.urls[1 - dead]
        assert metric(httpx.get(f"{alive}/metrics").text, "lsrcnn_jobs_taken_over_total") == 1
        t.start(dead)
        t.until_both_up()

        # 3. DELETE through the balancer, answered by the replica not running the job.
        doomed = submit(c, big[1])
        view = poll(c, doomed, {"running"})
        runner = f"replica{t.replica_of(view['replica']) + 1}"
        while c.get(f"/v1/jobs/{doomed}").headers["x-served-by"] != runner:
            pass  # round robin: the next request goes to the other replica
        r = c.delete(f"/v1/jobs/{doomed}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert r.headers["x-served-by"] != runner
        deadline = time.monotonic() + 10
        while store.xpending("lsrcnn:jobs", "replicas")["pending"]:  # its holder let it go
            assert time.monotonic() < deadline, "the running replica never stopped"
            time.sleep(0.1)
        assert poll(c, doomed, {"cancelled"})["tiles_done"] < view["tiles_total"]

        # 4. Redis killed (-9) and restarted in the middle of a batch: no job acknowledged
        # with 202 is lost.
        batch = [submit(c, data) for data in inputs[21:29]]
        t.redis.kill()
        time.sleep(1.0)
        assert c.get(f"/v1/jobs/{batch[0]}").status_code == 503
        assert c.post("/upscale?scale=2", content=inputs[0], headers=PNG).status_code == 200
        t.redis.start()
        ids += batch
        for job_id, data in zip(batch, inputs[21:29], strict=True):
            check_done(c, job_id, data)
        assert len(ids) == 30  # 21, the one taken over, and 8 across the Redis restart
    # Every acknowledged job done exactly once: each holds one result and one finish.
    for job_id in ids:
        fields = store.hgetall(f"lsrcnn:job:{job_id}")
        assert fields[b"status"] == b"done", job_id
        results = store.keys(f"lsrcnn:job:{job_id}:out:*")
        assert len(results) == 1, (job_id, job_id == victim_id, results, fields)
