"""The Open Inference Protocol (KServe v2) endpoints: Triton's own HTTP client against a real
server, JSON tensors and errors in-process, answers compared with ONNX Runtime directly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

from app.kserve_codec import HEADER_LENGTH, ProtocolError, parse_request
from bench.load import start_server
from tests.conftest import WEIGHTS
from tests.helpers import make_app, running

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


def direct(name: str, x: np.ndarray) -> np.ndarray:
    """The model file run by ONNX Runtime itself, no service in between."""
    session = ort.InferenceSession(str(WEIGHTS / f"{name}.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


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


def test_json_tensors_in_and_out() -> None:
    x = np.random.default_rng(3).random((1, 1, 6, 5), dtype=np.float32)

    async def main() -> None:
        async with running(make_app(max_output_pixels=20_000)) as c:
            r = await c.post("/v2/models/lsrcnn-lite-x4/infer", json={
                "id": "q1", "inputs": [{"name": "input", "shape": [1, 1, 6, 5],
                                        "datatype": "FP32", "data": x.ravel().tolist()}]})
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            body = r.json()
            assert body["id"] == "q1" and body["model_name"] == "lsrcnn-lite-x4"
            (out,) = body["outputs"]
            assert out["name"] == "output" and out["shape"] == [1, 1, 24, 20]
            got = np.asarray(out["data"], np.float32).reshape(out["shape"])
            assert np.abs(got - direct("lsrcnn-lite-x4", x)).max() <= 1e-4
            r = await c.post("/v2/models/lsrcnn-lite-x4/infer", json={
                "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "INT8",
                            "data": [1, 2, 3, 4]}]})
            assert r.status_code == 400 and r.json() == {
                "error": "input 'input': datatype must be FP32, got 'INT8'"}
            r = await c.post("/v2/models/lsrcnn-lite-x4/infer", content=b"{not json")
            assert r.status_code == 400 and set(r.json()) == {"error"}
            r = await c.post("/v2/models/lsrcnn-lite-x2/infer", json={
                "inputs": [{"name": "input", "shape": [2, 1, 60, 60], "datatype": "FP32",
                            "data": [0.5] * 7200}]})  # 2 x 120 x 120 out > the 20,000 allowed
            assert r.status_code == 413 and "over the limits" in r.json()["error"]
            r = await c.get("/v2/models/nope-x9/ready")
            assert r.status_code == 404 and set(r.json()) == {"error"}
            text = (await c.get("/metrics")).text
            assert ('lsrcnn_requests_total{route="/v2/models/{name}/infer",status="200"} 1.0'
                    in text)
            assert 'lsrcnn_model_pixels_total{model="lsrcnn-lite-x4",scale="4"} 30.0' in text

    asyncio.run(main())


def test_binary_framing_is_checked() -> None:
    header = (b'{"inputs":[{"name":"input","shape":[1,1,1,2],"datatype":"FP32",'
              b'"parameters":{"binary_data_size":8}}]}')
    data = np.array([0.25, 0.5], "<f4").tobytes()
    parsed = parse_request(header + data, len(header))
    assert parsed.inputs["input"].tolist() == [[[[0.25, 0.5]]]]
    for body, length, why in ((header + data[:4], len(header), "ends before"),
                              (header + data + b"xx", len(header), "no input declares"),
                              (header + data, len(header) + 99, HEADER_LENGTH)):
        with pytest.raises(ProtocolError, match=why):
            parse_request(body, length)
