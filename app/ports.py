"""Fail early and plainly when the port is taken, before any model is loaded."""

from __future__ import annotations

import errno
import socket


def taken(host: str, port: int) -> str | None:
    """Why (host, port) cannot be bound now, or None when it can. Binds as uvicorn will
    (SO_REUSEADDR), so a port in TIME_WAIT counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return "already in use"
            return err.strerror or str(err)
    return None
