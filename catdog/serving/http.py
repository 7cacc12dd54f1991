"""The HTTP side of ``catdog serve``: reading uploads, decoding images, and JSON errors.

Everything here runs in the HTTP server processes, per request, before a request is queued for an
inference worker: only valid, decoded and resized images reach the batching worker.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from catdog.data.transforms import ImageDecodeError, ImageTooLargeError, PreprocessConfig, open_image, resize_and_crop
from catdog.serving.models import ServedModel

logger = logging.getLogger("catdog.serve")

#: The error code of a status when the raising code did not choose one.
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    500: "internal_error",
    503: "not_ready",
    504: "timeout",
}
_RAW_TYPES = ("image/", "application/octet-stream")
USAGE_HINT = (
    "Send the image as a multipart upload in the field 'file' (curl -F file=@cat.jpg URL) or as the raw "
    "request body with its image content type (curl -H 'Content-Type: image/jpeg' --data-binary @cat.jpg URL)."
)


@dataclass(frozen=True)
class Limits:
    """What the HTTP processes need per request: the models by API path and the upload limits."""

    models: dict[str, ServedModel]  # by api path
    max_upload_bytes: int
    max_image_pixels: int


def client_error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    """An :class:`HTTPException` that the error handlers turn into ``{"error": code, "detail": detail}``."""
    return HTTPException(status_code=status, detail={"error": code, "detail": detail}, headers=headers)


def error_response(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body every endpoint answers with."""
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


async def read_image(request: Request) -> np.ndarray:
    """FastAPI dependency behind ``decode_request``: the uploaded image, decoded and resized, or a 4xx error."""
    # This runs only in the HTTP server processes, where --max-image-pixels is the one pixel limit in force:
    # decode_image checks every upload against it, so Pillow's own fixed limit (about 89.5 M) is turned off.
    Image.MAX_IMAGE_PIXELS = None
    limits: Limits = request.app.state.catdog
    model = limits.models[request.scope["path"]]
    data = await upload_bytes(request, limits.max_upload_bytes)
    return await run_in_threadpool(decode_image, data, model.config, limits.max_image_pixels)


async def upload_bytes(request: Request, limit: int) -> bytes:
    """The image bytes of a multipart (field ``file``) or raw-body upload; 4xx errors for anything else."""
    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";")[0].strip().lower()
    is_multipart = mime == "multipart/form-data"
    if not is_multipart and not mime.startswith(_RAW_TYPES):
        shown = mime or "none"
        raise client_error(415, "unsupported_media_type", f"content type {shown!r} is not accepted. {USAGE_HINT}")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise client_error(
            413,
            "upload_too_large",
            f"the upload is {int(length)} bytes, above the limit of {limit} bytes (--max-upload-mb)",
        )
    body = await _read_body(request, limit)
    if not is_multipart:
        if not body:
            raise client_error(400, "empty_body", f"the request body is empty. {USAGE_HINT}")
        return body
    return await _multipart_file(request, body)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, stopping with 413 as soon as it exceeds ``limit`` bytes (chunked uploads too)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise client_error(
                    413, "upload_too_large", f"the upload is larger than the limit of {limit} bytes (--max-upload-mb)"
                )
            chunks.append(chunk)
    except ClientDisconnect:  # no one to answer; counted in /metrics, not logged as a server failure
        raise client_error(400, "client_disconnected", "the client closed the connection during the upload") from None
    return b"".join(chunks)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    """The bytes of the multipart field ``file`` in ``body``."""

    async def once() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=16).parse()
    except MultiPartException as err:
        raise client_error(400, "bad_request", f"malformed multipart upload: {err.message}") from err
    try:
        upload = form.get("file")
        if upload is None:
            fields = sorted(form.keys())
            raise client_error(
                422, "missing_file", f"the multipart upload has no field 'file' (fields sent: {fields}). {USAGE_HINT}"
            )
        if isinstance(upload, str):
            raise client_error(422, "missing_file", f"the field 'file' is a text field, not a file. {USAGE_HINT}")
        data = await upload.read()
    finally:
        await form.close()
    if not data:
        raise client_error(400, "empty_body", "the uploaded file 'file' is empty")
    return data


def decode_image(data: bytes, config: PreprocessConfig, max_pixels: int) -> np.ndarray:
    """Decode and resize/crop one upload: uint8 (size, size, 3). Any decoding failure is the client's (4xx).

    An image of more than ``max_pixels`` pixels is refused (413) from its header, before it is decoded.
    """
    _check_pixels(data, max_pixels)
    try:
        image = open_image(data, max_pixels=max_pixels)
        return np.asarray(resize_and_crop(image, config), dtype=np.uint8)
    except ImageTooLargeError as err:
        raise client_error(
            413, "image_too_large", f"the image is larger than the limit of {max_pixels} pixels (--max-image-pixels)"
        ) from err
    except ImageDecodeError as err:
        raise client_error(400, "invalid_image", f"the upload is not a decodable image: {err}") from err
    except Exception as err:  # malformed files make Pillow raise almost anything
        raise client_error(
            400, "invalid_image", f"the upload is not a decodable image ({type(err).__name__}: {err})"
        ) from err


def _check_pixels(data: bytes, max_pixels: int) -> None:
    """413 naming both sizes when the image header says more than ``max_pixels`` pixels; unreadable headers pass."""
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
    except Image.DecompressionBombError as err:  # Pillow's own limit, where it is still on (outside the server)
        raise client_error(413, "image_too_large", f"{err} (--max-image-pixels is {max_pixels})") from err
    except Exception:
        return  # not an image, or a broken one: open_image says what is wrong
    if width * height > max_pixels:
        raise client_error(
            413,
            "image_too_large",
            f"the image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} pixels "
            "(--max-image-pixels)",
        )


def install_error_handlers(app: FastAPI, models: Sequence[ServedModel]) -> None:
    """Every error as JSON ``{"error", "detail"}``; a 404 under ``/predict`` names the served models."""
    endpoints = [m.api_path for m in models]

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        headers = getattr(exc, "headers", None)
        if isinstance(detail, dict) and "error" in detail:
            return JSONResponse(detail, status_code=exc.status_code, headers=headers)
        if exc.status_code == 404 and request.url.path.startswith("/predict"):
            return error_response(404, "unknown_model", f"no model at {request.url.path}; served: {endpoints}")
        return error_response(exc.status_code, ERROR_CODES.get(exc.status_code, "error"), str(detail), headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "unprocessable", str(exc.errors()))

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal_error", "the server failed to answer; see its log")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


class ExpiringBuffer(dict):
    """LitServe's response buffer (request id -> pending answer) that can forget entries older than ``max_age``.

    LitServe removes an entry when its handler gets the answer; a handler cancelled by :class:`Deadline`
    never does, so :meth:`prune` drops entries no handler can still be waiting for.
    """

    def __init__(self, max_age: float) -> None:
        super().__init__()
        self.max_age = max_age
        self._born: dict[Any, float] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        self._born[key] = time.monotonic()
        super().__setitem__(key, value)

    def pop(self, key: Any, *default: Any) -> Any:
        self._born.pop(key, None)
        return super().pop(key, *default)

    def prune(self) -> int:
        """Drop the entries older than ``max_age``; returns how many."""
        cutoff = time.monotonic() - self.max_age
        stale = [key for key, born in self._born.items() if born < cutoff]
        for key in stale:
            self.pop(key, None)
        return len(stale)


class Deadline:
    """ASGI middleware: every ``POST /predict/<name>`` is answered within ``timeout`` seconds, whatever happens.

    LitServe's own timeout applies only while a request waits in its queue; a request inside a worker that
    dies (or hangs) would wait forever. Past the deadline the request gets a JSON ``503 worker_restarted``
    when its model's worker was restarted meanwhile (send it again), else ``504 timeout``.
    """

    def __init__(
        self, app: Any, timeout: float, models: Sequence[str], restarts: Any, pending: ExpiringBuffer | None = None
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.paths = {f"/predict/{name}": name for name in models}
        self.restarts = restarts  # a RestartCounter
        self.pending = pending

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        name = self.paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        if name is None:
            await self.app(scope, receive, send)
            return
        restarts_before = self.restarts.model(name)
        started = False

        async def send_tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, send_tracked), self.timeout)
        except TimeoutError:
            if self.pending is not None:
                self.pending.prune()  # what LitServe kept for the requests no handler waits for any more
            if started:  # the answer is already on its way
                return
            if self.restarts.model(name) != restarts_before:
                response = error_response(
                    503,
                    "worker_restarted",
                    f"the inference worker of model {name!r} died while this request was in it and was restarted; "
                    "send the request again",
                    headers={"Retry-After": "1"},
                )
            else:
                response = error_response(
                    504, "timeout", f"model {name!r} did not answer within {self.timeout:g} s (--timeout)"
                )
            await response(scope, receive, send)
