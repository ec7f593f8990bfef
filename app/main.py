"""The ASGI app: `app.main:app`, or `create_app(settings)` for other settings (tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app import errors
from app.engine import Engine
from app.metrics import Metrics
from app.middleware import RequestContext
from app.routes import router
from app.settings import Settings
from app.upscaler import Upscaler


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    upscaler = Upscaler(settings, metrics, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background: the process is live (and says "not ready") meanwhile.
        loading = asyncio.create_task(upscaler.start())
        yield
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await upscaler.stop()

    app = FastAPI(title="LSRCNN upscaler", version="0.1.0", lifespan=lifespan,
                  summary="LSTM super-resolution: POST an image, get it 2x, 3x or 4x larger.")
    app.state.settings, app.state.metrics, app.state.upscaler = settings, metrics, upscaler
    app.include_router(router)
    errors.install(app)
    routes = {p for r in router.routes if (p := getattr(r, "path", None))}
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       routes=routes)
    return app


def __getattr__(name: str) -> FastAPI:
    """`app.main:app` for `uvicorn app.main:app`, built on first access (not on import), so
    importing create_app never builds a second app with settings from the environment."""
    if name == "app":
        globals()["app"] = built = create_app()
        return built
    raise AttributeError(name)
