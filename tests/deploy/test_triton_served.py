"""The exported Triton repository served by a real Triton (CI's `triton` stage).

The repository is made by the README's own command, served with the Triton that
`../shared/triton/build.sh` builds ($LSRCNN_TRITON_DIR) through its `serve.sh`, and every
exported model (clean and photo) is checked with tritonclient: its warm-up ran at load, an
infer on Set5 Y planes equals ONNX Runtime's output within 1e-5, and a batch over
`max_batch_size` is refused. Run with `pytest -m triton`; without $LSRCNN_TRITON_DIR it
fails, saying how to run it (the CI stage says so and skips where ../shared is absent)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from model import contract
from model.imaging import y_of
from model.triton_repo import MAX_BATCH_SIZE
from tests.conftest import ROOT, SET5
from tests.server import free_port

pytestmark = pytest.mark.triton
tritonclient = pytest.importorskip("tritonclient.http")
SERVE = Path(os.environ.get("LSRCNN_TRITON_SERVE", ROOT.parent / "shared/triton/serve.sh"))


def readme_export_command() -> str:
    """The Triton section's export line, as the README gives it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Triton"):]
    (line,) = [ln for ln in section.split("\n")
               if ln.startswith(".venv/bin/python -m model.triton_repo ")][:1]
    return line.split("#")[0].strip()


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    build = os.environ.get("LSRCNN_TRITON_DIR")
    if not build:
        pytest.fail("set LSRCNN_TRITON_DIR to a build of ../shared/triton/build.sh DIR "
                    "(.ci/run's triton stage does)")
    work = tmp_path_factory.mktemp("triton")
    (work / ".venv").symlink_to(ROOT / ".venv")
    command = readme_export_command()
    subprocess.run(["bash", "-c", command], cwd=work, check=True, capture_output=True)
    repo = work / command.split()[3]
    port = free_port()
    started = subprocess.run(["bash", str(SERVE), build, str(repo), str(port)],
                             capture_output=True, text=True, timeout=200)
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split()[-1])
    try:
        yield f"127.0.0.1:{port}", repo
    finally:
        os.kill(pid, 15)


def test_every_exported_model_warms_up_and_answers_as_onnx_runtime(
        triton: tuple[str, Path]) -> None:
    url, repo = triton
    names = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").exists())
    assert {"lsrcnn-lite-x2", "lsrcnn-lite-photo-x2", "lsrcnn-lite-x4"} <= set(names)
    # Warm-up, before any request of ours: each model has run its warm-up sample.
    for name in names:
        stats = httpx.get(f"http://{url}/v2/models/{name}/stats").json()["model_stats"][0]
        assert stats["execution_count"] >= 1, (name, stats)
    client = tritonclient.InferenceServerClient(url)
    planes = [contract.to_model(y_of(Image.open(p).convert("RGB")))
              for p in sorted(SET5.glob("*.png"))[:3]]
    for name in names:
        model_file = repo / name / "1" / "model.onnx"
        session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        for y in planes:
            x = y[None, None].astype(np.float32)
            inp = tritonclient.InferInput(contract.INPUT_NAME, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer(name, [inp]).as_numpy(contract.OUTPUT_NAME)
            want = session.run(None, {contract.INPUT_NAME: x})[0]
            assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5, name


def test_a_batch_over_max_batch_size_is_refused(triton: tuple[str, Path]) -> None:
    url, repo = triton
    client = tritonclient.InferenceServerClient(url)
    config = (repo / "lsrcnn-lite-x2" / "config.pbtxt").read_text()
    assert int(re.search(r"max_batch_size:\s*(\d+)", config).group(1)) == MAX_BATCH_SIZE
    x = np.zeros((MAX_BATCH_SIZE + 1, 1, 8, 8), np.float32)
    inp = tritonclient.InferInput(contract.INPUT_NAME, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(tritonclient.InferenceServerException, match="batch"):
        client.infer("lsrcnn-lite-x2", [inp])
