"""Fail early and plainly when the port is taken, before any model is loaded.

Standard library only: `make serve` runs `python3 -m app.ports` before it installs anything.
"""

from __future__ import annotations

import errno
import os
import socket
import sys


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


def require_free(host: str, port: int) -> None:
    """Exit 2 with a message that names the way out when (host, port) cannot be bound."""
    why = taken(host, port)
    if why is not None:
        print(f"lsrcnn: cannot listen on {host}:{port}: {why}. Another service (or an "
              f"earlier `make serve`) holds it; pick another port, e.g. "
              f"LSRCNN_PORT={port + 1} make serve", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # the settings' defaults, from the same environment variables
    require_free(os.environ.get("LSRCNN_HOST", "127.0.0.1"),
                 int(os.environ.get("LSRCNN_PORT", "8000")))
