"""Fixed, documented error answers: JSON `{"error", "request_id"}`, never exception text.

Every error body the service sends is built by `json_error`, whether from an exception
handler here or from the ASGI middleware.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from app.engine import EngineError
from app.imaging import ImageError
from app.scheduler import BatchFailed, Busy, DeadlineExceeded, TooLarge
from app.upscaler import UnknownModel

log = logging.getLogger("app.errors")


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str
    request_id: str


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class BodyTooLarge(Exception):
    pass


class ClientTimeout(Exception):
    """The client did not send its whole body in time (408)."""


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def json_error(status: int, message: str, rid: str,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(error=message, request_id=rid).model_dump(), status,
                        headers=headers)


def error_response(request: Request, status: int, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return json_error(status, message, request_id(request), headers)


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, err: ApiError) -> JSONResponse:
        return error_response(request, err.status, err.message, err.headers)

    @app.exception_handler(ImageError)
    async def _image(request: Request, err: ImageError) -> JSONResponse:
        return error_response(request, err.status, err.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, _validation_message(err))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        return error_response(request, err.status_code, str(err.detail), err.headers)

    @app.exception_handler(UnknownModel)
    async def _unknown(request: Request, err: UnknownModel) -> JSONResponse:
        return error_response(request, 422, str(err))

    @app.exception_handler(TooLarge)
    async def _large(request: Request, err: TooLarge) -> JSONResponse:
        return error_response(request, 413, str(err))

    @app.exception_handler(Busy)
    async def _busy(request: Request, err: Busy) -> JSONResponse:
        return error_response(request, 503, f"busy: {err}; retry later",
                              {"Retry-After": str(err.retry_after_s)})

    @app.exception_handler(DeadlineExceeded)
    async def _late(request: Request, err: DeadlineExceeded) -> JSONResponse:
        return error_response(request, 504, "request deadline exceeded")

    @app.exception_handler(BatchFailed)
    @app.exception_handler(EngineError)
    async def _engine(request: Request, err: Exception) -> JSONResponse:
        # The engine logged the model's own message and traceback under the failure id.
        cause = err.__cause__ if isinstance(err, BatchFailed) else err
        log.error("inference failed", extra={"fields": {
            "request_id": request_id(request), "error": repr(err),
            "failure_id": getattr(cause, "failure_id", None), "cause": str(cause)}})
        return error_response(request, 500, "inference failed")
