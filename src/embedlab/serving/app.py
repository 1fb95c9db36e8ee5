"""The HTTP API and its page (FastAPI), served by uvicorn on 127.0.0.1 unless told otherwise.

Routes:
  POST /search              multipart form: `file` (an image), optional `k` (1..max_k, default 10);
                            JSON: the top-k items with label, score and image URL, and `new_identity`
  GET  /items/{id}/image    a gallery image by its integer id (never by a path from the request)
  GET  /healthz             {"status": "ok", items, embedding size, index kind, threshold, limits}
  GET  /                    a page: drop or pick an image, see it beside its top-k thumbnails

Bad input gets a 4xx whose JSON `detail` is one sentence: 400 empty upload, 404 unknown item, 413 a
body over max_upload_bytes (refused from its Content-Length before it is read, or when the count
passes the limit) or an image over max_pixels (refused from its header before it is decoded), 415 not
an image, 422 an undecodable image or a bad form field, 429 (with Retry-After) an upload whose
declared pixels do not fit in the decode budget beside the uploads being decoded
(`embedlab.serving.decode_budget`). A Host that does not name the server gets 400, a foreign Origin
403 (`embedlab.serving.access`).

`serve` follows the index folder: every request is answered with the index as last written (`index
add`, `calibrate`, `index build --force` while the server runs), reloaded on the first request after
the write (see `embedlab.index.search.ReloadingSearcher`); a request in flight finishes on the index it
started with.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations, and
# `k`'s upper bound comes from create_app's local `limits`, which a postponed annotation cannot see.
import contextlib
import copy
import json
import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import torch
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedlab.data.decoding import DEFAULT_MAX_PIXELS, ImageRejectedError, declared_pixels
from embedlab.index.search import ReloadingSearcher, SearcherSource
from embedlab.serving.access import AccessPolicy, HostOriginGuard
from embedlab.serving.batching import DEFAULT_MAX_BATCH, BatchedSearch
from embedlab.serving.decode_budget import (
    DEFAULT_DECODE_WORKERS,
    RETRY_AFTER_S,
    DecodeBudget,
    DecodeBudgetExceededError,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
PAGE = "page.html"


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for (body bytes, decoded pixels, results), and what all the uploads
    being decoded at once may hold: decode_budget_pixels, on decode_workers threads."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_k: int = 100
    default_k: int = 10
    decode_budget_pixels: int = 2 * DEFAULT_MAX_PIXELS
    decode_workers: int = DEFAULT_DECODE_WORKERS

    def __post_init__(self) -> None:
        if self.decode_budget_pixels < self.max_pixels:
            raise ValueError(
                f"the decode budget ({self.decode_budget_pixels / 1e6:g} megapixels) is below the largest "
                f"image allowed ({self.max_pixels / 1e6:g} megapixels), which could then never be "
                "decoded: raise --decode-budget-megapixels or lower --max-megapixels"
            )


class UploadSizeLimit:
    """ASGI middleware: a request body over max_bytes gets 413 and is never read in full.

    A declared Content-Length over the limit is refused before the body is read. Without one (chunked
    uploads) the bytes are counted as they arrive; past the limit the app's body parsing is cut short
    and whatever it answers is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, size: str) -> None:
        limit = self.max_bytes / 1024 / 1024
        body = json.dumps({"detail": f"the request body is {size}; the upload limit is {limit:.1f} MiB"})
        body = body.encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        # Connection: close, as the unread rest of the body must not be taken for the next request.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, f"{int(declared) / 1024 / 1024:.1f} MiB")
            return
        received = 0
        replaced = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if received > self.max_bytes:
                if not replaced:
                    replaced = True
                    await self._reject(send, "over the limit")
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLargeError:
            if not replaced:
                replaced = True
                await self._reject(send, "over the limit")


class _BodyTooLargeError(Exception):
    pass


def _validation_message(error: RequestValidationError) -> str:
    """FastAPI's list of field errors as one sentence: "k: Input should be ...; file: Field required"."""
    parts = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
        parts.append(f"{field}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(
    searcher: SearcherSource,
    limits: ServerLimits | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    access: AccessPolicy | None = None,
) -> FastAPI:
    """The FastAPI app over a searcher (index + model; a `ReloadingSearcher` follows its folder), with
    the upload limit middleware; concurrent searches share forward passes of up to max_batch images (see
    `embedlab.serving.batching`); uploads decode within the limits' decode budget; requests are answered
    per the access policy (default: bound to 127.0.0.1:8000, no other names or origins). Routes look up
    `searcher.current()` on worker threads, never on the event loop (a reload is blocking work); a search
    reports the threshold that decided it."""
    limits = limits or ServerLimits()
    access = access or AccessPolicy()
    decoding = DecodeBudget(limits.decode_budget_pixels, limits.decode_workers)
    page = (resources.files("embedlab.serving") / PAGE).read_text()
    batched = BatchedSearch(searcher, max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batched.start()
        try:
            yield
        finally:
            await batched.stop()
            decoding.shutdown()

    app = FastAPI(title="embedlab search", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    # Outermost last: the Host/Origin guard, then CORS (so that a 413 reaches an allowed page with its
    # headers), then the upload limit.
    app.add_middleware(UploadSizeLimit, max_bytes=limits.max_upload_bytes)
    if access.allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(access.allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
            max_age=600,
        )
    app.add_middleware(HostOriginGuard, policy=access)
    app.state.decode_budget = decoding

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(error)}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        current = searcher.current()
        index, manifest = current.index, current.index.manifest
        return {
            "status": "ok",
            "items": len(index),
            "embedding_dim": index.embedding_dim,
            "index_kind": manifest.faiss.kind,
            "backbone": manifest.model.backbone,
            "threshold": current.threshold,
            "max_upload_bytes": limits.max_upload_bytes,
            "max_pixels": limits.max_pixels,
            "max_k": limits.max_k,
            "default_k": limits.default_k,
            "decode_budget_pixels": limits.decode_budget_pixels,
        }

    @app.post("/search")
    async def search(
        file: Annotated[UploadFile, File(description="the query image")],
        k: Annotated[int | None, Form(ge=1, le=limits.max_k, description="results to return")] = None,
    ) -> dict[str, Any]:
        data = await file.read()
        name = f"upload {file.filename!r}" if file.filename else "upload"
        # The header says what the decode will hold; an image over max_pixels is refused before
        # decoding, so it costs nothing.
        declared = declared_pixels(data)
        cost = declared if declared <= limits.max_pixels else 0
        try:
            # Decoding is CPU work: on the budget's pool, so the event loop keeps accepting requests.
            pixels = await decoding.run(
                cost, lambda: searcher.current().decode(data, name, limits.max_pixels)
            )
        except ImageRejectedError as error:
            raise HTTPException(status_code=error.status, detail=str(error)) from None
        except DecodeBudgetExceededError as error:
            headers = {"Retry-After": str(RETRY_AFTER_S)}
            raise HTTPException(status_code=429, detail=str(error), headers=headers) from None
        count = k or limits.default_k
        result = await batched.search(pixels, count)
        return {
            "k": count,
            "threshold": result.threshold,
            "new_identity": result.new_identity,
            "results": [
                {
                    "id": hit.id,
                    "label": hit.label,
                    "score": hit.score,
                    "filename": Path(hit.path).name,
                    "image_url": f"/items/{hit.id}/image",
                    "extra": hit.extra,
                }
                for hit in result.hits
            ],
        }

    @app.get("/items/{item_id}/image")
    def item_image(item_id: int) -> FileResponse:
        index = searcher.current().index
        if not 0 <= item_id < len(index):
            raise HTTPException(
                status_code=404, detail=f"no gallery item {item_id}; ids run from 0 to {len(index) - 1}"
            )
        path = Path(index.items[item_id].path)
        if not path.is_file():
            raise HTTPException(
                status_code=404, detail=f"the image file of gallery item {item_id} is missing"
            )
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type)

    return app


def serve(
    index_dir: str | Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    run_dir: str | Path | None = None,
    limits: ServerLimits | None = None,
    allow_hosts: tuple[str, ...] = (),
    allow_origins: tuple[str, ...] = (),
    device: str = "auto",
) -> None:
    """Load the index and its model (on `device`), then serve the app until interrupted, following the
    index folder as it is rewritten (see `create_app`); requests must name the bound address or one of
    allow_hosts, and come from no page or its own or one of allow_origins."""
    access = AccessPolicy(host, port, allow_hosts, allow_origins)  # checked before the model loads
    # A forward pass of a few small images is too little work to share between cores, and the event
    # loop and the decoding threads need a core too: intra-op threads would only contend with them
    # (on 2 loaded cores, a 16-pixel forward pass took 50 ms with 2 threads and 3 ms with 1).
    torch.set_num_threads(1)
    app = create_app(ReloadingSearcher(index_dir, run_dir, device), limits, access=access)
    # embedlab's own messages (an index reloaded, or one that could not be) beside uvicorn's, alike.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["embedlab"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config)
