"""The HTTP plumbing every door shares, as FastAPI dependencies: the upscaler, the API key,
the model a request asks for (with the early refusal), the image body, the deadline, and
a client that leaves. Routes declare them; none calls them by hand. All are coroutines:
FastAPI runs plain functions in a thread, and these read the event loop's state."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, Query, Request
from starlette.datastructures import UploadFile

from app.http.problems import ErrorBody, Problem
from app.images import imaging
from app.images.pipeline import Pipeline
from app.images.sizing import Size, SizeError
from app.runtime.upscaler import AUTO, UnknownModel, Upscaler

T = TypeVar("T")
RAW_TYPES = ("image/", "application/octet-stream")
BOUNDARY = re.compile(r'boundary=("?)([^";]+)\1', re.IGNORECASE)
FILE_FIELD = "file"


BINARY = {"schema": {"type": "string", "format": "binary"}}
# Both ways to send the image, as the OpenAPI spec shows them.
UPSCALE_BODY = {"requestBody": {"required": True, "content": {
    "image/*": BINARY,
    "application/octet-stream": BINARY,
    "multipart/form-data": {"schema": {
        "type": "object", "required": [FILE_FIELD],
        "properties": {FILE_FIELD: {"type": "string", "format": "binary"}}}},
}}}


def error_docs(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI descriptions of the error answers a route gives."""
    what = {400: "corrupt or truncated image, malformed multipart, empty body",
            401: "LSRCNN_API_KEY is set and the bearer token is missing or wrong",
            403: "cross-origin request from an origin not allowed",
            408: "the body did not arrive within LSRCNN_CLIENT_TIMEOUT_S",
            413: "body, input pixels or output pixels over their limits",
            415: f"not an image in an accepted format ({imaging.ACCEPTED_NAMES}), or a "
                 "Content-Type that is neither image/* nor multipart",
            422: "bad parameter, multi-frame image, or an output the format cannot hold",
            500: "the model failed",
            503: "not ready, queue full or shutting down (Retry-After)",
            504: "the request deadline passed"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}



async def get_upscaler(request: Request) -> Upscaler:
    return request.app.state.upscaler


UpscalerDep = Annotated[Upscaler, Depends(get_upscaler)]


async def get_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]


async def authorize(request: Request) -> None:
    """401 unless the bearer token is LSRCNN_API_KEY (when one is set)."""
    key = request.app.state.settings.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), key.get_secret_value().encode()):
        raise Problem(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


Authorized = Depends(authorize)


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def known_query(request: Request) -> None:
    """422 for a query parameter the endpoint does not take (`?width=600` was silently
    ignored, and the answer was not what was asked for)."""
    route = request.scope.get("route")
    allowed = _query_names(route.dependant) if route is not None else set()
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise Problem(422, f"unknown query parameter{'s' * (len(unknown) > 1)} "
                           f"{', '.join(unknown)}: this endpoint takes "
                           f"{', '.join(sorted(allowed)) or 'none'}")


KnownQuery = Depends(known_query)


def ready_model(up: Upscaler, scale: int | None, model: str | None = None,
                kind: str = AUTO) -> str:
    """The model a request asks for, before its image is seen: 422 for a scale, name or
    kind with no ready model, or ones that disagree; 503 while that may yet change."""
    try:
        return up.resolve(scale, model, kind)
    except ValueError as err:
        raise Problem(422, str(err)) from None
    except UnknownModel:
        if up.ready:
            raise
        # Not ready: the model asked for may be the one still loading or failing.
        raise Problem(503, f"not ready: {up.reason}", {"Retry-After": "5"}) from None


@dataclass(frozen=True)
class Choice:
    """What a request asked for, and the model it gets if its image does not decide
    (with kind auto, a compressed JPEG may still get the scale's photo model; with a width
    or height, the image's size decides the scale)."""

    size: Size
    model: str | None
    kind: str
    name: str

    @property
    def scale(self) -> int | None:
        """The model's scale, where the request alone decides it."""
        return None if self.size.by_image else self.size.integer


async def choose(
    up: UpscalerDep,
    scale: float | None = Query(None, gt=1, description="2, 3 or 4 runs the model of that "
                                "scale; a fractional scale up to 4 (1.5, 2.5) runs the next "
                                "integer scale's model, then resizes down with Lanczos "
                                "(default: the service's setting, or the named model's)"),
    width: int | None = Query(None, ge=1, le=1 << 16, description="target width; alone, the "
                              "height keeps the aspect ratio; not below the image's"),
    height: int | None = Query(None, ge=1, le=1 << 16, description="target height; alone, "
                               "the width keeps the aspect ratio; with width, exactly that "
                               "size"),
    model: str | None = Query(None, description="a model by name, e.g. lsrcnn-lite-x2 "
                              "(GET /v1/models lists them); default: chosen by scale and kind"),
    kind: Literal["auto", "clean", "photo"] = Query(
        AUTO, description="auto: a JPEG below LSRCNN_PHOTO_BELOW_QUALITY (estimated from its "
        "quantization tables) gets the photo model, anything else the clean one; clean or "
        "photo: that kind of model (GET /v1/models lists kinds)"),
) -> Choice:
    try:
        size = Size(scale, width, height)
        early = size.early_scale(up.scales) if up.scales and model is None else None
    except SizeError as err:
        raise Problem(422, str(err)) from None
    name = ready_model(up, early if model is None else size.integer, model, kind)
    if size.scale is not None and up.engine.models[name].scale < size.scale:
        raise Problem(422, f"model {name} upscales x{up.engine.models[name].scale}, less "
                           f"than the x{size.scale:g} asked for")
    return Choice(size, model, kind, name)


ChoiceDep = Annotated[Choice, Depends(choose)]


async def refuse_early(choice: ChoiceDep, up: UpscalerDep) -> None:
    """A request queue with no room answers 503 before the body is read (requests only:
    jobs wait behind requests, at background priority)."""
    up.schedulers[choice.name].refuse_early()


RefuseEarly = Depends(refuse_early)


async def image_body(request: Request) -> bytes:
    """The image, raw or as the multipart field `file` (declared after the model choice, so
    a wrong parameter answers before the body is read)."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        body = b"".join([chunk async for chunk in request.stream()])

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
        upload = form.get(FILE_FIELD)
        if not isinstance(upload, UploadFile):
            # The parser takes a cut-off body as a form with fewer fields: say what it is.
            boundary = BOUNDARY.search(request.headers.get("content-type", ""))
            closing = b"--" + boundary.group(2).encode("latin-1") + b"--" if boundary else b""
            if closing and closing not in body[-len(closing) - 8:]:
                raise Problem(400, "malformed multipart body: it ends before its closing "
                                   "boundary")
            raise Problem(422, f"multipart body needs a file field named '{FILE_FIELD}'")
        del body
        request.state.upload_name = upload.filename
        return await upload.read()
    if ctype.startswith(RAW_TYPES):
        # Read without request.body()'s cache: the only reference is the caller's, so the
        # body's memory goes as soon as the image is decoded.
        return b"".join([chunk async for chunk in request.stream()])
    raise Problem(415, "send the image as the body with Content-Type image/*, "
                       f"or as multipart/form-data field '{FILE_FIELD}'")


ImageBody = Annotated[bytes, Depends(image_body)]


async def upload_name(
    request: Request,
    filename: str | None = Query(None, max_length=255, description="the image's file name, "
                                 "for the download's (a multipart upload carries its own)"),
) -> str | None:
    """The uploaded file's name (declared after the body, whose multipart part names it)."""
    return filename or getattr(request.state, "upload_name", None)


UploadName = Annotated[str | None, Depends(upload_name)]


async def output_options(
    format: Literal["png", "jpeg", "webp"] | None = Query(
        None, description="output format (default: the input's where writable, else png)"),
    quality: int = Query(90, ge=1, le=100, description="quality of jpeg/webp output"),
    metadata: Literal["keep", "strip"] = Query(
        "keep", description="keep: EXIF (orientation reset, no thumbnail), XMP and ICC are "
        "carried where the format holds them; strip: EXIF and XMP are dropped (the ICC "
        "profile stays)"),
) -> tuple[str | None, int, bool]:
    return format, quality, metadata == "strip"


OutputOptions = Annotated[tuple[str | None, int, bool], Depends(output_options)]


async def deadline(request: Request, up: UpscalerDep) -> float:
    """The event loop time by which the request must be answered, counted from its arrival."""
    arrived = request.scope.get("state", {}).get("arrived", time.perf_counter())
    return (asyncio.get_running_loop().time() + up.settings.request_timeout_s
            - (time.perf_counter() - arrived))


Deadline = Annotated[float, Depends(deadline)]


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work` until it ends or the client disconnects; then cancel it (its waiting tiles
    leave the queue) and return None. The body is read by now, so the next ASGI message
    can only be the disconnect."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
