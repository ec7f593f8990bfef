"""Pure ASGI middleware: request id, security headers, body limit and timeout, origin check,
shutdown, access log, request metrics, last-resort 500."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.problems import CLIENT_GONE, BodyTooLarge, ClientTimeout, json_error
from app.http.shutdown import Drain
from app.runtime.metrics import Metrics

log = logging.getLogger("app.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Answered while draining: liveness and metrics stay true, readiness says why it is 503.
DRAIN_OPEN = {"/health/live", "/v2/health/live", "/health/ready", "/v2/health/ready", "/metrics"}


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int,
                 routes: set[str], client_timeout_s: float, drain: Drain,
                 allowed_origins: list[str], allowed_hosts: set[str]) -> None:
        self.app, self.metrics, self.max_body, self.routes = app, metrics, max_body_bytes, routes
        self.client_timeout_s, self.drain = client_timeout_s, drain
        self.allowed_origins = {k for o in allowed_origins if (k := _origin_key(o))}
        self.allowed_hosts = allowed_hosts

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
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                message["headers"] = [*kept, (b"x-request-id", rid.encode()),
                                      (b"x-content-type-options", b"nosniff")]
            await send(message)

        received, body_done = 0, False
        body_deadline = asyncio.get_running_loop().time() + self.client_timeout_s

        async def receive_wrapper() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come: no deadline on it
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                raise ClientTimeout(f"body not received within {self.client_timeout_s:g} s "
                                    "(the client timeout)") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body:
                    raise BodyTooLarge(f"body over the {self.max_body}-byte limit")
            return message

        async def answer(code: int, message: str, extra: dict[str, str] | None = None) -> None:
            if not status["sent"]:
                await json_error(code, message, rid, extra)(scope, receive, send_wrapper)

        try:
            with self.drain.track() as task:
                try:
                    await self._dispatch(scope, headers, receive_wrapper, send_wrapper, answer)
                except asyncio.CancelledError:
                    if not (self.drain.expired and task.cancelling()):
                        raise
                    task.uncancel()  # our own cancel at the end of the grace period
                    await answer(503, "shutting down: the request did not finish in the "
                                      "grace period", {"Retry-After": "5", "Connection": "close"})
        except BodyTooLarge as err:
            await answer(413, str(err), {"Connection": "close"})
        except ClientTimeout as err:
            log.info("client too slow", extra={"fields": {"request_id": rid}})
            await answer(408, str(err), {"Connection": "close"})
        except ClientDisconnect:
            # The client left: nobody to answer, nothing went wrong here.
            status["code"] = CLIENT_GONE
            log.info("client disconnected", extra={"fields": {"request_id": rid}})
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": rid}})
            await answer(500, "internal error")
        finally:
            elapsed = time.perf_counter() - start
            path = scope["path"]
            # The matched route's template (/v2/models/{name}/infer), never the raw path:
            # model names must not grow the label set.
            template = getattr(scope.get("route"), "path", None)
            route = path if path in self.routes else (
                template if template in self.routes else "other")
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.request_seconds.labels(route).observe(elapsed)
            log.info("%s %s %d", scope["method"], path, status["code"], extra={"fields": {
                "request_id": rid, "method": scope["method"], "path": path,
                "query": scope.get("query_string", b"").decode("latin-1"),
                "status": status["code"], "duration_ms": round(elapsed * 1000, 2),
                "client": (scope.get("client") or ("", 0))[0]}})

    async def _dispatch(self, scope: Scope, headers: dict[str, str], receive: Receive,
                        send: Send, answer) -> None:  # type: ignore[no-untyped-def]
        if self.drain.active and scope["path"] not in DRAIN_OPEN:
            await answer(503, "shutting down", {"Retry-After": "5", "Connection": "close"})
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await answer(413, f"body over the {self.max_body}-byte limit", {"Connection": "close"})
            return
        if not self._host_ok(headers):
            await answer(400, "the Host header names a host this service does not serve "
                              "(LSRCNN_ALLOWED_HOSTS)")
            return
        if not self._origin_ok(scope, headers):
            await answer(403, "cross-origin request from an origin not allowed "
                              "(LSRCNN_CORS_ORIGINS)")
            return
        await self.app(scope, receive, send)

    def _host_ok(self, headers: dict[str, str]) -> bool:
        """A page on a name the attacker owns, resolved to this address (DNS rebinding),
        sends that name as Host: only the names configured are served."""
        if "*" in self.allowed_hosts:
            return True
        return _hostname(headers.get("host", "")) in self.allowed_hosts

    def _origin_ok(self, scope: Scope, headers: dict[str, str]) -> bool:
        """Browsers send Origin on cross-origin POSTs, and a multipart form needs no CORS
        preflight: refuse such writes unless same-origin or from LSRCNN_CORS_ORIGINS,
        compared by scheme, host and port."""
        origin = headers.get("origin")
        if origin is None or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return True
        key = _origin_key(origin)
        if key is not None and key in self.allowed_origins:
            return True
        host = headers.get("host", "")
        return key is not None and (key[1], key[2]) == (
            _hostname(host), _port(host, DEFAULT_PORTS.get(key[0], 0)))


DEFAULT_PORTS = {"http": 80, "https": 443}


def _hostname(host: str) -> str | None:
    """The name in a Host header (or an origin's netloc), lower case, without port or
    IPv6 brackets; None when it does not parse."""
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:
        return None


def _port(host: str, default: int) -> int | None:
    try:
        return urlsplit(f"//{host}").port or default
    except ValueError:
        return None


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, the port made explicit."""
    try:
        parts = urlsplit(origin.strip().rstrip("/"))
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return parts.scheme.lower(), parts.hostname, port
