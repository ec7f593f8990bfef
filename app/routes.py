"""HTTP routes. They speak to the Upscaler only; ONNX Runtime stays behind it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile

from app.errors import ApiError
from app.upscaler import Upscaler

router = APIRouter()
T = TypeVar("T")

RAW_TYPES = ("image/", "application/octet-stream")


def _upscaler(request: Request) -> Upscaler:
    return request.app.state.upscaler


async def _read_image(request: Request) -> bytes:
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
        if upload is None:
            raise ApiError(422, "multipart body needs a file field named 'file'")
        return await upload.read()
    if ctype.startswith(RAW_TYPES):
        return await request.body()
    raise ApiError(415, "send the image as the body with Content-Type image/*, "
                        "or as multipart/form-data field 'file'")


@router.post("/upscale", response_class=Response, responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
          "description": "the upscaled image"}})
async def upscale(
    request: Request,
    scale: int | None = Query(None, description="2, 3 or 4 (default: the service's setting)"),
    format: Literal["png", "jpeg", "webp"] | None = Query(
        None, description="output format (default: the input's where writable, else png)"),
    quality: int = Query(90, ge=1, le=100, description="quality of jpeg/webp output"),
) -> Response:
    up = _upscaler(request)
    if not up.ready:
        raise ApiError(503, f"not ready: {up.reason}", {"Retry-After": "5"})
    scale = up.settings.default_scale if scale is None else scale
    if scale not in up.scales:
        raise ApiError(422, f"scale must be one of {up.scales}")
    data = await _read_image(request)
    arrived = request.scope.get("state", {}).get("arrived", time.perf_counter())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + up.settings.request_timeout_s - (time.perf_counter() - arrived)
    result = await _unless_client_leaves(request, up.upscale(data, scale, format, quality,
                                                             deadline))
    if result is None:  # nobody is listening; the status is for the log and the metrics
        return Response(status_code=CLIENT_GONE)
    timing = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in result.timings.items())
    return StreamingResponse(result.chunks, media_type=result.media_type, headers={
        "Content-Length": str(result.length), "Server-Timing": timing,
        "X-Tiles": str(result.tiles), "X-Tile-Overhead": f"{result.overhead:.3f}"})


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


@router.get("/health/ready")
@router.get("/v2/health/ready")
async def ready(request: Request) -> JSONResponse:
    up = _upscaler(request)
    if up.ready:
        return JSONResponse({"status": "ready", "scales": up.scales})
    return JSONResponse({"status": "not ready", "reason": up.reason}, 503,
                        headers={"Retry-After": "5"})


@router.get("/v1/models")
async def models(request: Request) -> dict:
    up = _upscaler(request)
    return {"models": [
        {"scale": info.scale, "preset": info.preset, "provider": info.provider,
         "file": info.path.name, "card": info.card()}
        for info in (up.engine.models[s] for s in up.scales)]}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    up = _upscaler(request)
    return Response(generate_latest(up.metrics.registry), media_type=CONTENT_TYPE_LATEST)
