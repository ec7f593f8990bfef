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

from app.batcher import BatchFailed, DeadlineExceeded, QueueFull
from app.engine import EngineError
from app.imaging import ImageError

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

    @app.exception_handler(QueueFull)
    async def _full(request: Request, err: QueueFull) -> JSONResponse:
        return error_response(request, 503, "queue full, retry later", {"Retry-After": "1"})

    @app.exception_handler(DeadlineExceeded)
    async def _late(request: Request, err: DeadlineExceeded) -> JSONResponse:
        return error_response(request, 504, "request deadline exceeded")

    @app.exception_handler(BatchFailed)
    @app.exception_handler(EngineError)
    async def _engine(request: Request, err: Exception) -> JSONResponse:
        # The engine logged the model's own message and traceback under the same failure id.
        engine = request.app.state.upscaler.engine
        failure = getattr(engine, "last_failure", None) or {}
        log.error("inference failed", extra={"fields": {
            "request_id": request_id(request), "error": repr(err),
            "failure_id": failure.get("id"), "cause": failure.get("cause")}})
        return error_response(request, 500, "inference failed")
