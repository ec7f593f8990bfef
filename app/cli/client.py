"""The command line's side of the jobs API: submit with bounded concurrency, poll, fetch,
delete. The same code drives a remote service and, with `--local`, the service's own app
in this process (no server, no port: the HTTP calls go straight to the ASGI app)."""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.cli.files import Task

POLL_S = 0.25
BUSY_RETRIES = 20  # 503s (a full spool, not ready) waited out per file, at Retry-After


class Failed(Exception):
    """One file could not be upscaled; the message says why, as the service put it."""


@dataclass
class Progress:
    """Tiles done over all files (the bar's total grows as files are accepted)."""

    bar: Any  # tqdm, or anything with total, update() and refresh()
    failures: dict[str, str] = field(default_factory=dict)
    written: int = 0

    def grow(self, tiles: int) -> None:
        self.bar.total = (self.bar.total or 0) + tiles
        self.bar.refresh()


def _reason(r: httpx.Response) -> str:
    try:
        return f"{r.status_code}: {r.json()['error']}"
    except Exception:
        return f"{r.status_code}: {r.text[:200]}"


async def _submit(http: httpx.AsyncClient, task: Task, query: dict[str, str]) -> dict:
    data = task.source.read_bytes()
    mime = mimetypes.guess_type(task.source.name)[0] or "application/octet-stream"
    for _ in range(BUSY_RETRIES):
        r = await http.post("/v1/jobs", params=query,
                            files={"file": (task.source.name, data, mime)})
        if r.status_code == 202:
            view = r.json()
            view["location"] = r.headers["location"]
            return view
        if r.status_code != 503:
            raise Failed(_reason(r))
        await asyncio.sleep(min(30.0, float(r.headers.get("retry-after", "5"))))
    raise Failed(f"service busy: {_reason(r)}")


async def _one(http: httpx.AsyncClient, task: Task, query: dict[str, str],
               progress: Progress) -> None:
    view = await _submit(http, task, query)
    where, seen = view["location"], 0
    progress.grow(view["tiles_total"])
    try:
        while view["status"] in ("queued", "running"):
            await asyncio.sleep(POLL_S)
            r = await http.get(where)
            if r.status_code != 200:
                raise Failed(_reason(r))
            view = r.json()
            progress.bar.update(view["tiles_done"] - seen)
            seen = view["tiles_done"]
        if view["status"] != "done":
            raise Failed(view.get("error") or f"the job was {view['status']}")
        task.target.parent.mkdir(parents=True, exist_ok=True)
        part = task.target.with_name(task.target.name + ".part")
        async with http.stream("GET", view["result_url"]) as r:
            if r.status_code != 200:
                raise Failed(_reason(r))
            with open(part, "wb") as f:
                async for chunk in r.aiter_bytes():
                    f.write(chunk)
        part.replace(task.target)  # whole or not at all: a rerun never skips half a file
        progress.written += 1
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await http.delete(where)  # done or not, the spool is freed


async def run(http: httpx.AsyncClient, tasks: list[Task], query: dict[str, str],
              concurrency: int, progress: Progress) -> None:
    """Every task, `concurrency` jobs in flight at once; failures are kept per file."""
    slots = asyncio.Semaphore(concurrency)

    async def guarded(task: Task) -> None:
        async with slots:
            try:
                await _one(http, task, query, progress)
            except Failed as err:
                progress.failures[str(task.source)] = str(err)
            except httpx.HTTPError as err:
                progress.failures[str(task.source)] = f"no answer from the service: {err!r}"
            except OSError as err:
                progress.failures[str(task.source)] = f"{err.strerror}: {err.filename}"

    await asyncio.gather(*(guarded(t) for t in tasks))


@contextlib.asynccontextmanager
async def remote(url: str, api_key: str | None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        yield http


@contextlib.asynccontextmanager
async def local() -> AsyncIterator[httpx.AsyncClient]:
    """The service's app in this process, with its own spool, once its models are ready."""
    from app.main import create_app
    from app.settings import Settings

    with tempfile.TemporaryDirectory(prefix="lsrcnn-local-") as spool:
        settings = Settings(spool_dir=spool, allowed_hosts="localhost")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            up = app.state.upscaler
            while not up.ready:
                if "failed" in up.reason:
                    raise Failed(f"the models did not load: {up.reason}")
                await asyncio.sleep(0.05)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost",
                                         timeout=None) as http:
                yield http
