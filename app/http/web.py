"""The web page at `/`: plain HTML, CSS and a little JavaScript from `app/http/static/`, no
build step and nothing loaded from elsewhere (the Content-Security-Policy says so)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/static"
# Only this origin's files; images also from blob: URLs (the picked file, the result).
POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
          "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
          "frame-ancestors 'none'")

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": POLICY,
                                 "Cache-Control": "no-cache"})


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    """Browsers ask for /favicon.ico whatever the page links: the same icon, not a 404."""
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})
