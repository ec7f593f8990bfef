"""`python -m app` / `lsrcnn-serve`: run the service with uvicorn and JSON logs."""

from __future__ import annotations

import uvicorn

from app import logs
from app.main import create_app
from app.settings import Settings


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_config=None, access_log=False,
                timeout_graceful_shutdown=settings.graceful_timeout_s)


if __name__ == "__main__":
    main()
