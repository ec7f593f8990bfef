"""The KServe v2 endpoints through the real tritonclient, against a real service process.
Only these tests need tritonclient (the dev extra); they skip, saying so, without it."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import numpy as np
import pytest

from tests.helpers import direct
from tests.server import start_server

triton = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

# The bound of a tile: tile_size + 2 * overlap = 64 LR pixels.
SETTINGS = {"LSRCNN_TILE_SIZE": "48", "LSRCNN_TILE_OVERLAP": "8", "LSRCNN_MAX_BATCH_SIZE": "4"}


@pytest.fixture(scope="module")
def client() -> Iterator[triton.InferenceServerClient]:
    proc, url = start_server("app", {**SETTINGS, "LSRCNN_LOG_LEVEL": "warning"})
    try:
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        yield client
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def infer(client: triton.InferenceServerClient, name: str, x: np.ndarray) -> np.ndarray:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    wanted = triton.InferRequestedOutput("output", binary_data=True)
    return client.infer(name, [tensor], outputs=[wanted]).as_numpy("output")


def test_health_and_metadata_through_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lsrcnn-lite-x2") and not client.is_model_ready("nope-x9")
    server = client.get_server_metadata()
    assert server["name"] == "lsrcnn" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("lsrcnn-lite-x3")
    assert meta["name"] == "lsrcnn-lite-x3"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32",
                                "shape": [-1, 1, -1, -1]}]
    with pytest.raises(InferenceServerException, match="unknown model 'nope-x9'"):
        client.get_model_metadata("nope-x9")


@pytest.mark.parametrize(("name", "shape"), [
    ("lsrcnn-lite-x2", (1, 1, 20, 28)),
    ("lsrcnn-lite-x3", (1, 1, 64, 37)),  # at the tile bound
    ("lsrcnn-lite-x2", (2, 1, 40, 33)),  # a batch of two images
])
def test_binary_infer_is_the_models_own_output(client: triton.InferenceServerClient,
                                               name: str, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    got = infer(client, name, x)
    want = direct(name, x)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4


def test_above_the_tile_bound_the_tiling_applies(client: triton.InferenceServerClient) -> None:
    x = np.random.default_rng(1).random((1, 1, 100, 90), dtype=np.float32)
    got = infer(client, "lsrcnn-lite-x2", x)
    want = direct("lsrcnn-lite-x2", x)
    assert got.shape == (1, 1, 200, 180)
    assert np.abs(got - want).mean() < 2e-3  # tiles with overlap: close, not identical


def test_infer_errors_are_the_protocols(client: triton.InferenceServerClient) -> None:
    bad = triton.InferInput("input", [1, 3, 8, 8], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InferenceServerException, match=r"must be \[N, 1, H, W\]"):
        client.infer("lsrcnn-lite-x2", [bad])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope-x9", [bad])
