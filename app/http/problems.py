"""Every error answer, written once: a status, a message, headers and, where a client acts
on it, a machine-readable reason. Rendered as this service's JSON body
(`{"error", "request_id", "reason"?, ...}`) or as the Open Inference Protocol's
(`{"error"}`). Imports nothing of the engine: the uvicorn protocol class renders with it.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

# nginx's code for "client closed request": logged and counted, never sent.
CLIENT_GONE = 499


class ErrorBody(BaseModel):
    """The body of every error answer; `reason` and `largest_side` only where they apply."""

    error: str
    request_id: str
    reason: str | None = None  # e.g. too_slow: more model time than a request may take
    largest_side: int | None = None  # with too_slow: the largest square input that fits


class BodyTooLarge(Exception):
    """The body passed LSRCNN_MAX_BODY_BYTES (413, from the middleware)."""


class ClientTimeout(Exception):
    """The client did not send its whole body in time (408, from the middleware)."""


class Problem(Exception):
    """An error answer: raised anywhere above the engine, rendered by the app's handler."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 **fields: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
        self.fields = {k: v for k, v in fields.items() if v is not None}


def json_error(status: int, message: str, rid: str, headers: dict[str, str] | None = None,
               **fields: Any) -> JSONResponse:
    body = ErrorBody(error=message, request_id=rid, **fields)
    return JSONResponse(body.model_dump(exclude_none=True), status, headers=headers)


def render(problem: Problem, rid: str) -> JSONResponse:
    return json_error(problem.status, problem.message, rid, problem.headers, **problem.fields)


def render_v2(problem: Problem) -> JSONResponse:
    """The Open Inference Protocol's error body: the message alone."""
    return JSONResponse({"error": problem.message}, problem.status, headers=problem.headers)
