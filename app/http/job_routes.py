"""HTTP routes of the jobs API: `/v1/jobs`. The same bodies, parameters and checks as
`/upscale`; the work goes to the spool and runs in the background."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from app.background import spool
from app.background.entry import SpoolFull
from app.background.store import Jobs, StoreUnavailable
from app.http import naming
from app.http.deps import (
    UPSCALE_BODY,
    Authorized,
    ChoiceDep,
    ImageBody,
    KnownQuery,
    OutputOptions,
    UploadName,
    error_docs,
)
from app.http.problems import Problem
from app.images import imaging

router = APIRouter()

_JOB = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["id", "status", "progress", "tiles_done", "tiles_total",
                                   "eta_s"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "done", "failed",
                                              "cancelled"]},
        "progress": {"type": "number"}, "tiles_done": {"type": "integer"},
        "tiles_total": {"type": "integer"}, "eta_s": {"type": "number"},
        "scale": {"type": "integer"}, "model": {"type": "string"},
        "size": {"type": "array", "items": {"type": "integer"}},
        "filename": {"type": "string"},
        "format": {"type": "string"},
        "error": {"type": "string"}, "result_url": {"type": "string"}}}}}}
_404 = {404: {**error_docs(400)[400], "description": "no such job (or it expired)"}}


def _jobs(request: Request) -> Jobs:
    return request.app.state.jobs


@contextlib.contextmanager
def _store() -> Iterator[None]:
    """The shared store unreachable: 503 with its reason (requests to /upscale go on)."""
    try:
        yield
    except StoreUnavailable as err:
        raise Problem(503, f"the jobs store is unavailable: {err}; retry later",
                      {"Retry-After": "5"}) from None


def _known(job_id: str) -> None:
    if not spool.ID.match(job_id):
        raise Problem(404, "no such job (it may have expired)")


@router.post("/v1/jobs", status_code=202, openapi_extra=UPSCALE_BODY,
             dependencies=[KnownQuery, Authorized],
             responses={202: {**_JOB, "description": "accepted; Location names the job"},
                        **error_docs(400, 401, 403, 408, 413, 415, 422, 503)})
async def create_job(
    request: Request, choice: ChoiceDep, data: ImageBody, uploaded: UploadName,
    output: OutputOptions,
) -> JSONResponse:
    fmt, quality, strip = output
    try:
        with _store():
            view = await _jobs(request).create(data, choice.size, fmt, quality, choice.model,
                                               choice.kind, strip, uploaded)
    except SpoolFull as err:
        raise Problem(503, f"busy: {err}; retry later",
                      {"Retry-After": str(err.retry_after_s)}) from None
    return JSONResponse(view, 202, headers={"Location": f"/v1/jobs/{view['id']}"})


@router.get("/v1/jobs/{job_id}", responses={200: _JOB, **_404, **error_docs(503)})
async def get_job(request: Request, job_id: str) -> JSONResponse:
    _known(job_id)
    with _store():
        view = await _jobs(request).status(job_id)
    if view is None:
        raise Problem(404, "no such job (it may have expired)")
    return JSONResponse(view)


@router.get("/v1/jobs/{job_id}/result", response_class=Response, responses={
    200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
          "description": "the upscaled image"},
    409: {**_JOB, "description": "not done (yet): the job's status"}, **_404,
    **error_docs(503)})
async def job_result(request: Request, job_id: str) -> Response:
    _known(job_id)
    with _store():
        found = await _jobs(request).open_result(job_id)
    if found is None:
        raise Problem(404, "no such job (it may have expired)")
    view, body = found
    if view["status"] != "done":
        retry = {} if view["status"] == "failed" else {"Retry-After": str(
            max(1, round(view["eta_s"])))}
        return JSONResponse(view, 409, headers=retry)
    target = (view["size"][0], view["size"][1]) if "size" in view else None
    name = naming.download_name(view.get("filename"), job_id,
                                naming.suffix(view["scale"], target), view["format"])
    headers = {"Content-Disposition": naming.disposition(name)}
    media_type = imaging.MEDIA_TYPES[view["format"]]
    if isinstance(body, Path):
        return FileResponse(body, media_type=media_type, headers=headers)
    headers["Content-Length"] = str(body.size)
    return StreamingResponse(body.chunks(), media_type=media_type, headers=headers)


@router.delete("/v1/jobs/{job_id}", dependencies=[Authorized],
               responses={200: _JOB, **error_docs(401, 503), **_404})
async def delete_job(request: Request, job_id: str) -> JSONResponse:
    _known(job_id)
    with _store():
        view = await _jobs(request).cancel(job_id)
    if view is None:
        raise Problem(404, "no such job (it may have expired)")
    return JSONResponse(view)
