"""The naive baseline server: each request alone, its tiles one model call at a time.

The way many SR servers work (Real-ESRGAN's tile loop behind a web handler): ONNX Runtime's
default session options, no queue and no batching across requests; concurrent requests
simply call the session concurrently from the web server's thread pool.
Same decoding, tiling, colour and encoding code as the real service, so only batching differs.

    python -m bench.naive  (LSRCNN_* settings as for the service)
"""

from __future__ import annotations

import asyncio

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response

from app import imaging
from app.engine import Engine
from app.settings import Settings
from app.upscaler import finish, prepare


def create_naive_app(settings: Settings) -> FastAPI:
    # ONNX Runtime's defaults, as a plain `InferenceSession(path)` gets: one call uses every core.
    engine = Engine(settings.model_copy(update={"workers": 1, "intra_op_threads": 0}))
    engine.load()
    app = FastAPI()

    def work(data: bytes, scale: int) -> tuple[bytes, str]:
        job = prepare(data, scale, settings)
        out = np.concatenate([engine.run(scale, tile[None]) for tile in job.tiles])
        fmt = imaging.output_format(None, job.decoded.format)
        return finish(job, out, scale, fmt, 90, settings), imaging.MEDIA_TYPES[fmt]

    @app.get("/health/ready")
    async def ready() -> dict:
        return {"status": "ready"}

    @app.post("/upscale")
    async def upscale(request: Request, scale: int = 2) -> Response:
        body, media = await asyncio.to_thread(work, await request.body(), scale)
        return Response(body, media_type=media)

    return app


def main() -> None:
    settings = Settings()
    uvicorn.run(create_naive_app(settings), host=settings.host, port=settings.port,
                log_level="warning")


if __name__ == "__main__":
    main()
