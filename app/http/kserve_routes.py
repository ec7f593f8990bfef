"""Open Inference Protocol (KServe v2) endpoints on the service's port.

`GET /v2` (server metadata), `GET /v2/models/{name}` (tensor metadata),
`GET /v2/models/{name}/ready` and `POST /v2/models/{name}/infer` (JSON tensors and the
binary tensor data extension). The health paths (`/v2/health/*`) live with the others in
app/routes.py. The tensor is the model contract itself: FP32 `[N, 1, H, W]` of Y / 255 in,
`[N, 1, sH, sW]` out. Inference goes through the Upscaler, so through the same schedulers
and admission as `/upscale`; errors are the protocol's `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from app.http import kserve_codec as codec
from app.http.deps import Authorized, UpscalerDep, deadline, unless_client_leaves
from app.http.errors import problem_of, request_id
from app.http.problems import CLIENT_GONE, Problem, render_v2
from app.images.pipeline import Pipeline
from app.runtime.upscaler import Upscaler
from model import contract

log = logging.getLogger("app.kserve")
DIGITS = re.compile(r"[0-9]{1,12}")
router = APIRouter(prefix="/v2")

SERVER_NAME = "lsrcnn"
VERSION = "1"  # each file is one version of its model
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]


class V2ErrorBody(BaseModel):
    """The protocol's error answer."""

    error: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {400: "malformed request, or a tensor that is not the model's input",
            401: "LSRCNN_API_KEY is set and the bearer token is missing or wrong",
            404: "unknown model or version",
            413: "more model work than the deadline allows, or too many tiles",
            500: "the model failed",
            503: "not ready, queue full or shutting down (Retry-After)",
            504: "the request deadline passed"}
    return {c: {"model": V2ErrorBody, "description": what[c]} for c in codes}


_JSON_OBJECT = {"schema": {"type": "object"}}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# JSON tensors, or the binary extension: the JSON header, then the raw tensor bytes.
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": _JSON_OBJECT, "application/octet-stream": _BINARY}}}
INFER_OK = {200: {"content": {"application/json": _JSON_OBJECT,
                              "application/octet-stream": _BINARY},
                  "description": "the output tensor (binary when asked for)"}}


# The names a model gets from its metadata (<preset>-x<scale>): the bundled ones as examples.
ModelName = Annotated[str, Path(description="a model's name, as GET /v1/models lists them",
                                examples=["lsrcnn-lite-x2"])]
Version = Annotated[str, Path(description="the model's version: 1", examples=[VERSION])]


def _model(up: Upscaler, name: str, version: str | None) -> None:
    """404 unless the model (and version) exists; 503 while it is not ready."""
    if name not in up.engine.models or version not in (None, VERSION):
        raise Problem(404, f"unknown model {name!r}" + (f" version {version!r}"
                                                        if version else ""))
    if not up.model_ready(name):
        raise Problem(503, f"model {name} is not ready: {up.reason}", {"Retry-After": "5"})
    up.schedulers[name].refuse_early()  # a full queue answers before the body is read


@router.get("")
async def server_metadata(request: Request) -> dict:
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


def _metadata(up: Upscaler, name: str, version: str | None) -> JSONResponse:
    if name not in up.engine.models or version not in (None, VERSION):
        return render_v2(Problem(404, f"unknown model {name!r}"))
    tensor = {"datatype": contract.DATATYPE, "shape": list(contract.INPUT_SHAPE)}
    return JSONResponse({
        "name": name, "versions": [VERSION], "platform": PLATFORM,
        "inputs": [{"name": contract.INPUT_NAME, **tensor}],
        "outputs": [{"name": contract.OUTPUT_NAME, **tensor,
                     "shape": list(contract.OUTPUT_SHAPE)}]})


@router.get("/models/{name}", responses=_errors(404))
async def model_metadata(up: UpscalerDep, name: ModelName) -> JSONResponse:
    return _metadata(up, name, None)


@router.get("/models/{name}/versions/{version}", responses=_errors(404))
async def model_version_metadata(up: UpscalerDep, name: ModelName, version: Version
                                 ) -> JSONResponse:
    return _metadata(up, name, version)


@router.get("/models/{name}/ready", responses=_errors(404, 503))
async def model_ready(up: UpscalerDep, name: ModelName) -> JSONResponse:
    try:
        _model(up, name, None)
    except Problem as err:
        return render_v2(err)
    return JSONResponse({"name": name, "ready": True})


_INFER = {"response_class": Response, "openapi_extra": INFER_BODY, "dependencies": [Authorized],
          "responses": {**INFER_OK, **_errors(400, 401, 404, 413, 500, 503, 504)}}


@router.post("/models/{name}/infer", **_INFER)
async def infer(request: Request, up: UpscalerDep, name: ModelName) -> Response:
    return await _infer(request, up, name, None)


@router.post("/models/{name}/versions/{version}/infer", **_INFER)
async def infer_version(request: Request, up: UpscalerDep, name: ModelName, version: Version
                        ) -> Response:
    return await _infer(request, up, name, version)


async def _infer(request: Request, up: Upscaler, name: str, version: str | None) -> Response:
    try:
        _model(up, name, version)
        parsed = await _parse(request)
        x = _input(parsed, up.settings.max_batch_images)
        _check_json_output(parsed, x.shape, up.engine.models[name].scale)
        pipeline: Pipeline = request.app.state.pipeline
        work = pipeline.tensor(name, x, await deadline(request, up), request_id(request))
        out = await unless_client_leaves(request, work)
    except Exception as err:
        problem = problem_of(err, request_id(request))
        if problem is None:
            raise  # unexpected: the middleware logs it and answers a plain 500
        return render_v2(problem)
    if out is None:  # nobody is listening; the status is for the log and the metrics
        return Response(status_code=CLIENT_GONE)
    # Off the event loop: a JSON answer is written value by value.
    parts, header_length = await asyncio.to_thread(
        codec.encode_response, name, VERSION, parsed, {contract.OUTPUT_NAME: out})
    if header_length is None:
        return Response(parts[0], media_type="application/json")
    # The tensor's bytes go out as views of the output array: no copy of the answer.
    size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
    return StreamingResponse(iter(parts), media_type="application/octet-stream",
                             headers={codec.HEADER_LENGTH: str(header_length),
                                      "Content-Length": str(size)})


async def _parse(request: Request) -> codec.InferRequest:
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise Problem(400, "compressed request bodies are not supported")
    given = request.headers.get(codec.HEADER_LENGTH.lower())
    if given is not None and not DIGITS.fullmatch(given):
        raise Problem(400, f"{codec.HEADER_LENGTH} must be a number of bytes (ASCII digits)")
    # Read without request.body()'s cache, as /upscale reads its image.
    body = b"".join([chunk async for chunk in request.stream()])
    try:
        # Off the event loop: JSON tensors are parsed and checked value by value.
        parsed = await asyncio.to_thread(codec.parse_request, body,
                                         None if given is None else int(given))
    except codec.ProtocolError as err:
        raise Problem(400, str(err)) from None
    unknown = set(parsed.outputs) - {contract.OUTPUT_NAME}
    if unknown:
        raise Problem(400, f"unknown outputs {sorted(unknown)}; the model has "
                           f"'{contract.OUTPUT_NAME}'")
    return parsed


def _input(parsed: codec.InferRequest, max_images: int) -> np.ndarray:
    if set(parsed.inputs) != {contract.INPUT_NAME}:
        raise Problem(400, f"the model takes one input, '{contract.INPUT_NAME}'; got "
                           f"{sorted(parsed.inputs)}")
    x = parsed.inputs[contract.INPUT_NAME]
    try:
        contract.check_input(x.shape)
    except ValueError as err:
        raise Problem(400, str(err)) from None
    if x.shape[0] > max_images:
        raise Problem(413, f"{x.shape[0]} images in one request; the limit is {max_images} "
                           "(LSRCNN_MAX_BATCH_IMAGES): send them in several requests")
    return x


def _check_json_output(parsed: codec.InferRequest, shape: tuple[int, ...], scale: int
                       ) -> None:
    """An answer asked for as JSON must stay small enough to write: before any work."""
    values = shape[0] * shape[2] * shape[3] * scale * scale
    binary = parsed.outputs.get(contract.OUTPUT_NAME, parsed.binary_output)
    if not binary and values > codec.MAX_JSON_VALUES:
        raise Problem(413, f"the output has {values} values, too many for JSON (at most "
                           f"{codec.MAX_JSON_VALUES}); ask for it in binary (binary_data)")
