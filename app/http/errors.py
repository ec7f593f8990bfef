"""The table of errors: what each failure of the pipeline answers, once, whichever door the
request came in by (`/upscale` and `/v1/jobs` render it as our JSON, v2 infer as the
protocol's body). Unexpected failures are logged with the request id and answer a plain
500 from the middleware, never the exception text.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.http.problems import Problem, render
from app.images.imaging import ImageError
from app.runtime.engine import EngineError
from app.runtime.upscaler import UnknownModel
from app.runtime.work import BatchFailed, Busy, DeadlineExceeded, TooLarge

log = logging.getLogger("app.http.errors")

# Raised by the pipeline and its parts: each has one answer, below.
KNOWN = (Problem, ImageError, UnknownModel, TooLarge, Busy, DeadlineExceeded, BatchFailed,
         EngineError)


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def problem_of(err: BaseException, rid: str = "") -> Problem | None:
    """The answer to a known failure; None for anything else (a bug: a plain 500)."""
    if isinstance(err, Problem):
        return err
    if isinstance(err, ImageError):
        return Problem(err.status, err.message)
    if isinstance(err, UnknownModel):
        return Problem(422, str(err))
    if isinstance(err, TooLarge):
        return Problem(413, str(err), reason=err.reason, largest_side=err.largest_side)
    if isinstance(err, Busy):
        return Problem(503, f"busy: {err}; retry later",
                       {"Retry-After": str(err.retry_after_s)})
    if isinstance(err, DeadlineExceeded):
        return Problem(504, "request deadline exceeded")
    if isinstance(err, BatchFailed | EngineError):
        # The engine logged the model's own message and traceback under the failure id.
        cause = err.__cause__ if isinstance(err, BatchFailed) else err
        log.error("inference failed", extra={"fields": {
            "request_id": rid, "error": repr(err),
            "failure_id": getattr(cause, "failure_id", None), "cause": str(cause)}})
        return Problem(500, "inference failed")
    return None


def error_response(request: Request, status: int, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return render(Problem(status, message, headers), request_id(request))


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    # A parameter of a dependency shared by two others is checked once per path: say it once.
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


def install(app: FastAPI) -> None:
    async def known(request: Request, err: Exception) -> JSONResponse:
        problem = problem_of(err, request_id(request))
        assert problem is not None  # registered for KNOWN only
        return render(problem, request_id(request))

    for kind in KNOWN:
        app.add_exception_handler(kind, known)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, _validation_message(err))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        return error_response(request, err.status_code, str(err.detail), err.headers)
