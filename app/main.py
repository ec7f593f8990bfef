"""The ASGI app: `app.main:app`, or `create_app(settings)` for other settings (tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware

from app.background.jobs import JobManager
from app.background.shared import SharedJobs
from app.http import errors, job_routes, web
from app.http.kserve_routes import router as kserve_router
from app.http.middleware import RequestContext
from app.http.routes import router
from app.http.shutdown import Drain
from app.images.pipeline import Pipeline
from app.runtime.engine import Engine
from app.runtime.metrics import Metrics
from app.runtime.upscaler import Upscaler
from app.settings import Settings

log = logging.getLogger("app.main")


async def _load(upscaler: Upscaler, metrics: Metrics, retry_s: float) -> None:
    """Load the models; while the default scale's model fails, retry (a volume still being
    filled, a file being replaced). Files that fail beside a good default are counted and
    left out until the next start."""
    while True:
        await upscaler.start()
        for name in upscaler.engine.failed:
            metrics.model_load_failures.labels(name).inc()
        if upscaler.ready or retry_s <= 0:
            return
        log.warning("not ready (%s); retrying the model load in %g s", upscaler.reason, retry_s)
        await asyncio.sleep(retry_s)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    upscaler = Upscaler(settings, metrics, engine)
    drain = Drain(settings.graceful_timeout_s)
    pipeline = Pipeline(upscaler)
    shared = bool(settings.jobs_store.get_secret_value())
    jobs = SharedJobs(pipeline, metrics) if shared else JobManager(pipeline, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        drain.loop = asyncio.get_running_loop()
        # Load in the background: the process is live (and says "not ready") meanwhile.
        loading = asyncio.create_task(_load(upscaler, metrics, settings.model_retry_s))
        await jobs.start()  # spooled jobs run once the models are ready
        yield
        await jobs.stop()  # before the schedulers: interrupted jobs stay in the spool
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await upscaler.stop()

    # /docs and /redoc load Swagger UI and ReDoc from a public CDN: off unless asked for.
    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None}
    app = FastAPI(title="LSRCNN upscaler", version="0.1.0", lifespan=lifespan,
                  summary="LSTM super-resolution: POST an image, get it 2x, 3x or 4x larger.",
                  **docs)
    app.state.settings, app.state.metrics, app.state.upscaler = settings, metrics, upscaler
    app.state.drain = drain
    app.state.jobs, app.state.pipeline = jobs, pipeline
    app.include_router(router)
    app.include_router(job_routes.router)
    app.include_router(web.router)
    app.include_router(kserve_router)
    app.mount(web.STATIC_PATH, StaticFiles(directory=web.STATIC), name="static")
    errors.install(app)
    routes = {p for r in (*router.routes, *kserve_router.routes)
              if (p := getattr(r, "path", None))}
    routes |= {"/", "/v1/jobs"}  # job ids and file names would make a label per job
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       routes=routes, client_timeout_s=settings.client_timeout_s, drain=drain,
                       allowed_origins=settings.allowed_origins, allowed_hosts=settings.hosts)
    if settings.allowed_origins:  # outermost, so preflights are answered before anything else
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Server-Timing", "X-Model", "X-Tiles",
                                           "Location", "Content-Disposition"])
    return app


def __getattr__(name: str) -> FastAPI:
    """`app.main:app` for `uvicorn app.main:app`, built on first access (not on import), so
    importing create_app never builds a second app with settings from the environment."""
    if name == "app":
        globals()["app"] = built = create_app()
        return built
    raise AttributeError(name)
