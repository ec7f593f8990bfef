"""HTTP routes. They speak to the Upscaler only; ONNX Runtime stays behind it."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.http import naming
from app.http.deps import (
    BINARY,
    UPSCALE_BODY,
    Authorized,
    ChoiceDep,
    Deadline,
    ImageBody,
    KnownQuery,
    OutputOptions,
    PipelineDep,
    RefuseEarly,
    UploadName,
    UpscalerDep,
    error_docs,
    unless_client_leaves,
)
from app.http.errors import request_id
from app.http.problems import CLIENT_GONE
from app.images import imaging

router = APIRouter()

@router.post("/upscale", response_class=Response, openapi_extra=UPSCALE_BODY,
             dependencies=[KnownQuery, Authorized, RefuseEarly], responses={
                 200: {"content": {t: BINARY for t in imaging.MEDIA_TYPES.values()},
                       "description": "the upscaled image"},
                 **error_docs(400, 401, 403, 408, 413, 415, 422, 500, 503, 504)})
async def upscale(
    request: Request, pipeline: PipelineDep, choice: ChoiceDep, data: ImageBody,
    uploaded: UploadName, deadline: Deadline, output: OutputOptions,
) -> Response:
    fmt, quality, strip = output
    work = pipeline.respond(data, choice.size, fmt, quality, deadline, request_id(request),
                            model=choice.model, kind=choice.kind, strip=strip)
    del data  # the pipeline holds it until the image is decoded
    result = await unless_client_leaves(request, work)
    if result is None:  # nobody is listening; the status is for the log and the metrics
        return Response(status_code=CLIENT_GONE)
    timing = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in result.timings.items())
    name = naming.download_name(uploaded, "upscaled", naming.suffix(
        result.scale, result.target), result.fmt)
    # Streamed as it is encoded (chunked): the whole encoded image is never held at once.
    return StreamingResponse(result.chunks, media_type=result.media_type, headers={
        "Server-Timing": timing, "X-Model": result.model, "X-Tiles": str(result.tiles),
        "X-Tile-Overhead": f"{result.overhead:.3f}",
        "Content-Disposition": naming.disposition(name)})


@router.get("/health/live")
@router.get("/v2/health/live")
async def live() -> dict:
    return {"status": "live"}


_READY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["status"],
    "properties": {"status": {"type": "string"}, "reason": {"type": "string"},
                   "scales": {"type": "array", "items": {"type": "integer"}},
                   "models": {"type": "array", "items": {"type": "string"}},
                   "failed_models": {"type": "array", "items": {"type": "string"}},
                   "jobs": {"type": "object", "properties": {
                       "store": {"type": "string"}, "available": {"type": "boolean"},
                       "reason": {"type": "string"}}}}}}}}


@router.get("/health/ready", responses={200: _READY, 503: {**_READY, "description": "not ready"}})
@router.get("/v2/health/ready", responses={200: _READY, 503: {**_READY,
                                                              "description": "not ready"}})
async def ready(request: Request, up: UpscalerDep) -> JSONResponse:
    failed = sorted(up.engine.failed)  # file names only: never this machine's paths
    if request.app.state.drain.active:
        return JSONResponse({"status": "not ready", "reason": "shutting down"}, 503,
                            headers={"Retry-After": "5"})
    if up.ready:
        # A shared job store that is down is reported, not a reason to stop serving
        # /upscale: the balancer keeps sending requests, job routes answer 503.
        return JSONResponse({"status": "ready", "scales": up.scales, "models": up.models,
                             "failed_models": failed,
                             "jobs": request.app.state.jobs.health()})
    return JSONResponse({"status": "not ready", "reason": up.reason, "failed_models": failed},
                        503, headers={"Retry-After": "5"})


@router.get("/v1/models")
async def models(up: UpscalerDep) -> dict:
    return {"models": [
        {"name": info.name, "arch": info.arch, "scale": info.scale, "preset": info.preset,
         "kind": info.kind, "strength": info.strength,
         "provider": info.provider, "engine": info.engine, "precision": info.precision,
         "engine_trials": info.trials, "engine_notes": info.notes, "file": info.path.name,
         "ready": up.model_ready(info.name),
         "default_for_scale": up.engine.model_for(info.scale) == info.name, "card": info.card()}
        for info in (up.engine.models[name] for name in up.models)]}


@router.get("/metrics", response_class=Response, responses={200: {
    "content": {"text/plain": {"schema": {"type": "string"}}},
    "description": "Prometheus text exposition format"}})
async def metrics(up: UpscalerDep) -> Response:
    return Response(generate_latest(up.metrics.registry), media_type=CONTENT_TYPE_LATEST)
