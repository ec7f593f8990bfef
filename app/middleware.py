"""Pure ASGI middleware: request id, body limit, access log, request metrics, last-resort 500."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BodyTooLarge
from app.metrics import Metrics

log = logging.getLogger("app.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int,
                 routes: set[str]) -> None:
        self.app, self.metrics, self.max_body, self.routes = app, metrics, max_body_bytes, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        rid = given if _VALID_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        scope["state"]["arrived"] = start
        status = {"code": 500, "sent": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(f"body over the {self.max_body}-byte limit")
            return message

        try:
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body:
                await self._json(send_wrapper, 413, f"body over the {self.max_body}-byte limit",
                                 rid)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": rid}})
            if not status["sent"]:
                await self._json(send_wrapper, 500, "internal error", rid)
        finally:
            elapsed = time.perf_counter() - start
            path = scope["path"]
            route = path if path in self.routes else "other"
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.request_seconds.labels(route).observe(elapsed)
            log.info("%s %s %d", scope["method"], path, status["code"], extra={"fields": {
                "request_id": rid, "method": scope["method"], "path": path,
                "query": scope.get("query_string", b"").decode("latin-1"),
                "status": status["code"], "duration_ms": round(elapsed * 1000, 2),
                "client": (scope.get("client") or ("", 0))[0]}})

    @staticmethod
    async def _json(send: Send, code: int, message: str, rid: str) -> None:
        body = json.dumps({"error": message, "request_id": rid}).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
