"""HTTP routes of the jobs API: `/v1/jobs`. The same bodies, parameters and checks as
`/upscale`; the work goes to the spool and runs in the background."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from app.background import spool
from app.background.jobs import Entry, JobManager, SpoolFull
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


def _jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def _entry(request: Request, job_id: str) -> Entry:
    entry = _jobs(request).get(job_id) if spool.ID.match(job_id) else None
    if entry is None:
        raise Problem(404, "no such job (it may have expired)")
    return entry


@router.post("/v1/jobs", status_code=202, openapi_extra=UPSCALE_BODY,
             dependencies=[KnownQuery, Authorized],
             responses={202: {**_JOB, "description": "accepted; Location names the job"},
                        **error_docs(400, 401, 403, 408, 413, 415, 422, 503)})
async def create_job(
    request: Request, choice: ChoiceDep, data: ImageBody, uploaded: UploadName,
    output: OutputOptions,
) -> JSONResponse:
    jobs = _jobs(request)
    fmt, quality, strip = output
    try:
        state = await jobs.submit(data, choice.size, fmt, quality, choice.model, choice.kind,
                                  strip, uploaded)
    except SpoolFull as err:
        raise Problem(503, f"busy: {err}; retry later",
                      {"Retry-After": str(err.retry_after_s)}) from None
    entry = jobs.get(state.id)
    assert entry is not None
    return JSONResponse(jobs.view(entry), 202, headers={"Location": f"/v1/jobs/{state.id}"})


@router.get("/v1/jobs/{job_id}", responses={200: _JOB, **_404})
async def get_job(request: Request, job_id: str) -> JSONResponse:
    return JSONResponse(_jobs(request).view(_entry(request, job_id)))


@router.get("/v1/jobs/{job_id}/result", response_class=Response, responses={
    200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
          "description": "the upscaled image"},
    409: {**_JOB, "description": "not done (yet): the job's status"}, **_404})
async def job_result(request: Request, job_id: str) -> Response:
    jobs = _jobs(request)
    entry = _entry(request, job_id)
    view = jobs.view(entry)
    if view["status"] != "done":
        retry = {} if view["status"] == "failed" else {"Retry-After": str(
            max(1, round(view["eta_s"])))}
        return JSONResponse(view, 409, headers=retry)
    path, media_type = jobs.result(entry)
    st = entry.state
    target = (st.target[0], st.target[1]) if st.target else None
    name = naming.download_name(st.filename, job_id, naming.suffix(st.scale, target),
                                st.out_format)
    return FileResponse(path, media_type=media_type,
                        headers={"Content-Disposition": naming.disposition(name)})


@router.delete("/v1/jobs/{job_id}", dependencies=[Authorized],
               responses={200: _JOB, **error_docs(401), **_404})
async def delete_job(request: Request, job_id: str) -> JSONResponse:
    _entry(request, job_id)
    view = await _jobs(request).cancel(job_id)
    if view is None:  # removed meanwhile
        raise Problem(404, "no such job (it may have expired)")
    return JSONResponse(view)
