"""uvicorn, hardened: a header timeout on every request (the first on a connection
included), no `server` header, and a SIGTERM that drains first and exits 0."""

from __future__ import annotations

import asyncio
import math
import uuid
from types import FrameType

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.http.problems import json_error
from app.http.shutdown import Drain
from app.settings import Settings

# uvicorn's own default, made explicit: request line plus headers may not exceed 16 KiB.
MAX_HEADER_BYTES = 16 * 1024


class GuardedH11Protocol(H11Protocol):
    """uvicorn's keep-alive timer starts only after a first response and is reset by every
    byte, so a silent or trickling client could hold a connection for ever. Here a
    request's headers must be complete within `header_timeout_s` of the connection opening
    or of the previous response ending."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial = False
        self._head = b""  # the start of a request whose headers are not all in yet
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is not None and self._head_too_long(data):
            self._raw_error(431, "Request Header Fields Too Large",
                            f"request line and headers over {MAX_HEADER_BYTES} bytes")
            self.transport.close()
            return
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._partial = self._partial or bool(data)
        else:  # headers are in: the body has its own (ASGI-level) timeout
            self._disarm()

    def _head_too_long(self, data: bytes) -> bool:
        """h11 bounds only a request head that arrives in pieces: one sent in a single
        write would pass whole. Count it here, however the bytes arrive."""
        self._head += data[: MAX_HEADER_BYTES + 4 - len(self._head)]
        end = self._head.find(b"\r\n\r\n")
        if end == -1:
            return len(self._head) > MAX_HEADER_BYTES
        return end > MAX_HEADER_BYTES

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._partial = False
        self._head = b""
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._partial:  # a request was started: say why it ends
            self._raw_error(408, "Request Timeout", f"request headers not received within "
                                                    f"{self.header_timeout_s:g} s")
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers unparseable requests (bad syntax, headers over the size limit) in
        plain text; answer them in the service's JSON like every other error."""
        self._raw_error(400, "Bad Request", f"malformed HTTP request: {msg}")
        self.transport.close()

    def _raw_error(self, status: int, reason: str, message: str) -> None:
        """Below h11: there may be no parsed request to answer."""
        body = json_error(status, message, uuid.uuid4().hex).body
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"x-content-type-options: nosniff\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode() + body)


def protocol(header_timeout_s: float) -> type[GuardedH11Protocol]:
    return type("GuardedH11", (GuardedH11Protocol,), {"header_timeout_s": header_timeout_s})


class Server(uvicorn.Server):
    """On SIGTERM/SIGINT: drain at once (readiness 503), close the listener after the
    shutdown delay, and return normally (exit 0) instead of re-raising the signal."""

    def __init__(self, config: uvicorn.Config, drain: Drain, delay_s: float) -> None:
        super().__init__(config)
        self.drain, self.delay_s = drain, delay_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.active:  # a second signal: stop now, in-flight requests or not
            self.should_exit = self.force_exit = True
            return
        self.drain.begin()
        loop = self.drain.loop
        if self.delay_s > 0 and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.call_later, self.delay_s, self._stop)
        else:
            self._stop()

    def _stop(self) -> None:
        self.should_exit = True


def config(app: object, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        server_header=False, http=protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        # Our own drain answers the stragglers at the grace's end; uvicorn's cut comes later.
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s) + 2)
