"""HTTP routes. They speak to the Upscaler only; ONNX Runtime stays behind it."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile

from app import imaging
from app.errors import ApiError, ErrorBody, request_id
from app.upscaler import AUTO, UnknownModel, Upscaler

router = APIRouter()
T = TypeVar("T")

RAW_TYPES = ("image/", "application/octet-stream")
FILE_FIELD = "file"
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# Both ways to send the image, as the OpenAPI spec shows them.
UPSCALE_BODY = {"requestBody": {"required": True, "content": {
    "image/*": _BINARY,
    "application/octet-stream": _BINARY,
    "multipart/form-data": {"schema": {
        "type": "object", "required": [FILE_FIELD],
        "properties": {FILE_FIELD: {"type": "string", "format": "binary"}}}},
}}}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {400: "corrupt or truncated image, malformed multipart, empty body",
            401: "LSRCNN_API_KEY is set and the bearer token is missing or wrong",
            403: "cross-origin request from an origin not allowed",
            408: "the body did not arrive within LSRCNN_CLIENT_TIMEOUT_S",
            413: "body, input pixels or output pixels over their limits",
            415: f"not an image in an accepted format ({imaging.ACCEPTED_NAMES}), or a "
                 "Content-Type that is neither image/* nor multipart",
            422: "bad parameter, multi-frame image, or an output the format cannot hold",
            500: "the model failed",
            503: "not ready, queue full or shutting down (Retry-After)",
            504: "the request deadline passed"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


def _upscaler(request: Request) -> Upscaler:
    return request.app.state.upscaler


def _authorize(request: Request) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), key.get_secret_value().encode()):
        raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


KIND_QUERY = Query(AUTO, description="auto: a JPEG below LSRCNN_PHOTO_BELOW_QUALITY (estimated "
                  "from its quantization tables) gets the photo model, anything else the clean "
                  "one; clean or photo: that kind of model (GET /v1/models lists kinds)")
MODEL_QUERY = Query(None, description="a model by name, e.g. lsrcnn-lite-x2 (GET /v1/models "
                    "lists them); default: chosen by scale and kind")


def ready_model(up: Upscaler, scale: int | None, model: str | None = None,
                kind: str = AUTO) -> str:
    """The model a request asks for, before its image is seen: 503 before the service is
    ready, 422 for a scale, name or kind with no ready model, or ones that disagree."""
    try:
        return up.resolve(scale, model, kind)
    except ValueError as err:
        raise ApiError(422, str(err)) from None
    except UnknownModel:
        if up.ready:
            raise
        # Not ready: the model asked for may be the one still loading or failing.
        raise ApiError(503, f"not ready: {up.reason}", {"Retry-After": "5"}) from None


async def _read_image(request: Request) -> bytes:
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get(FILE_FIELD)
        if not isinstance(upload, UploadFile):
            raise ApiError(422, f"multipart body needs a file field named '{FILE_FIELD}'")
        return await upload.read()
    if ctype.startswith(RAW_TYPES):
        # Read without request.body()'s cache: the only reference is the caller's, so the
        # body's memory goes as soon as the image is decoded.
        return b"".join([chunk async for chunk in request.stream()])
    raise ApiError(415, "send the image as the body with Content-Type image/*, "
                        f"or as multipart/form-data field '{FILE_FIELD}'")


@router.post("/upscale", response_class=Response, openapi_extra=UPSCALE_BODY, responses={
    200: {"content": {t: _BINARY for t in imaging.MEDIA_TYPES.values()},
          "description": "the upscaled image"},
    **_errors(400, 401, 403, 408, 413, 415, 422, 500, 503, 504)})
async def upscale(
    request: Request,
    scale: int | None = Query(None, description="2, 3 or 4 (default: the service's setting, "
                              "or the named model's)"),
    model: str | None = MODEL_QUERY,
    kind: Literal["auto", "clean", "photo"] = KIND_QUERY,
    format: Literal["png", "jpeg", "webp"] | None = Query(
        None, description="output format (default: the input's where writable, else png)"),
    quality: int = Query(90, ge=1, le=100, description="quality of jpeg/webp output"),
) -> Response:
    _authorize(request)
    up = _upscaler(request)
    name = ready_model(up, scale, model, kind)
    scale = up.engine.models[name].scale
    up.schedulers[name].refuse_early()  # a full queue answers before the body is read
    data = await _read_image(request)
    arrived = request.scope.get("state", {}).get("arrived", time.perf_counter())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + up.settings.request_timeout_s - (time.perf_counter() - arrived)
    work = up.upscale(data, scale, format, quality, deadline, request_id(request), model=model,
                      kind=kind)
    del data  # the pipeline holds it until the image is decoded
    result = await _unless_client_leaves(request, work)
    if result is None:  # nobody is listening; the status is for the log and the metrics
        return Response(status_code=CLIENT_GONE)
    timing = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in result.timings.items())
    # Streamed as it is encoded (chunked): the whole encoded image is never held at once.
    return StreamingResponse(result.chunks, media_type=result.media_type, headers={
        "Server-Timing": timing, "X-Model": result.model, "X-Tiles": str(result.tiles),
        "X-Tile-Overhead": f"{result.overhead:.3f}"})


# nginx's code for "client closed request": logged and counted, never sent.
CLIENT_GONE = 499


async def _unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work` until it ends or the client disconnects; then cancel it (its waiting tiles
    leave the queue) and return None. The body is read by now, so the next ASGI message
    can only be the disconnect."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


@router.get("/health/live")
@router.get("/v2/health/live")
async def live() -> dict:
    return {"status": "live"}


_READY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["status"],
    "properties": {"status": {"type": "string"}, "reason": {"type": "string"},
                   "scales": {"type": "array", "items": {"type": "integer"}},
                   "models": {"type": "array", "items": {"type": "string"}},
                   "failed_models": {"type": "array", "items": {"type": "string"}}}}}}}


@router.get("/health/ready", responses={200: _READY, 503: {**_READY, "description": "not ready"}})
@router.get("/v2/health/ready", responses={200: _READY, 503: {**_READY,
                                                              "description": "not ready"}})
async def ready(request: Request) -> JSONResponse:
    up = _upscaler(request)
    failed = sorted(up.engine.failed)  # file names only: never this machine's paths
    if request.app.state.drain.active:
        return JSONResponse({"status": "not ready", "reason": "shutting down"}, 503,
                            headers={"Retry-After": "5"})
    if up.ready:
        return JSONResponse({"status": "ready", "scales": up.scales, "models": up.models,
                             "failed_models": failed})
    return JSONResponse({"status": "not ready", "reason": up.reason, "failed_models": failed},
                        503, headers={"Retry-After": "5"})


@router.get("/v1/models")
async def models(request: Request) -> dict:
    up = _upscaler(request)
    return {"models": [
        {"name": info.name, "arch": info.arch, "scale": info.scale, "preset": info.preset,
         "kind": info.kind,
         "provider": info.provider, "file": info.path.name, "ready": up.model_ready(info.name),
         "default_for_scale": up.engine.model_for(info.scale) == info.name, "card": info.card()}
        for info in (up.engine.models[name] for name in up.models)]}


@router.get("/metrics", response_class=Response, responses={200: {
    "content": {"text/plain": {"schema": {"type": "string"}}},
    "description": "Prometheus text exposition format"}})
async def metrics(request: Request) -> Response:
    up = _upscaler(request)
    return Response(generate_latest(up.metrics.registry), media_type=CONTENT_TYPE_LATEST)
