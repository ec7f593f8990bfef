"""Fixed, documented error answers: JSON `{"error", "request_id"}`, never exception text."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.engine import EngineError
from app.imaging import ImageError
from app.scheduler import BatchFailed, Busy, DeadlineExceeded, TooLarge

log = logging.getLogger("app.errors")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class BodyTooLarge(Exception):
    pass


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def error_response(request: Request, status: int, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "request_id": request_id(request)}, status,
                        headers=headers)


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

    @app.exception_handler(BodyTooLarge)
    async def _body(request: Request, err: BodyTooLarge) -> JSONResponse:
        return error_response(request, 413, str(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, _validation_message(err))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        return error_response(request, err.status_code, str(err.detail), err.headers)

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
        log.error("inference error", extra={"fields": {"request_id": request_id(request),
                                                       "error": repr(err)}})
        return error_response(request, 500, "inference failed")
