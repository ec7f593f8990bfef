"""`python -m app` / `lsrcnn-serve`: run the service with uvicorn and JSON logs."""

from __future__ import annotations

import sys

from app import logs, ports
from app.http.server import Server, config
from app.main import create_app
from app.settings import Settings


def main() -> None:
    settings = Settings()
    ports.require_free(settings.host, settings.port)
    logs.configure(settings.log_level)
    app = create_app(settings)
    server = Server(config(app, settings), app.state.drain, settings.shutdown_delay_s)
    server.run()
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the lifespan failed to start


if __name__ == "__main__":
    main()
