"""The Open Inference Protocol (KServe v2) endpoints in-process: JSON tensors, the binary
framing and errors, answers compared with ONNX Runtime directly (tritonclient's own tests:
test_kserve_tritonclient.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.http.kserve_codec import HEADER_LENGTH, ProtocolError, parse_request
from tests.helpers import direct, make_app, running


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
