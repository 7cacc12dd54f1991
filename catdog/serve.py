"""``catdog serve``: serve exported ONNX models over HTTP with LitServe, one endpoint per model.

This module imports no torch (directly or through its imports): onnxruntime, numpy, Pillow and
LitServe only, so the serving install (``pip install 'catdog[serve]'``) and its container stay small.

Endpoints:

* ``POST /predict/<name>``: an image as a multipart upload (field ``file``) or as a raw body with an
  ``image/*`` (or ``application/octet-stream``) content type. Answer::

      {"model": "pretrained", "label": "Dog", "class_id": 1, "probabilities": {"Cat": 0.03, "Dog": 0.97}}

* ``GET /health``: ``200 {"status": "ok", "models": {...}}`` once every model's workers are loaded,
  ``503 {"error": "not_ready", ...}`` before.
* Every error is JSON ``{"error": <code>, "detail": <message>}`` with a 4xx status for client mistakes:
  ``400 empty_body | invalid_image | bad_request``, ``404 unknown_model | not_found``,
  ``405 method_not_allowed``, ``413 upload_too_large | image_too_large``, ``415 unsupported_media_type``,
  ``422 missing_file``.

Each upload is read, size-checked, decoded (EXIF orientation, first frame, any mode to RGB) and resized
on its own in the HTTP process, as the ``decode_request`` dependency, before it is queued; only valid
images reach the batching inference worker, so one bad upload never fails the good ones batched with it.
The worker normalises (the same :func:`catdog.transforms.eval_transform` as training's eval, split
in two), batches, runs onnxruntime and answers each request. The preprocessing is read from the ONNX
file's metadata, written by ``catdog export``.

Options fall back to environment variables (handy in a container):

==========================  ===========================  ==========================================
environment variable        option                       meaning (default)
==========================  ===========================  ==========================================
``CATDOG_MODELS``           ``--model`` (repeatable)     ``NAME=PATH[,NAME=PATH...]`` models to serve
``CATDOG_HOST``             ``--host``                   bind address (``0.0.0.0``)
``CATDOG_PORT``             ``--port``                   port (``8000``)
``CATDOG_MAX_BATCH_SIZE``   ``--max-batch-size``         dynamic batch size; 1 turns batching off (8)
``CATDOG_BATCH_TIMEOUT``    ``--batch-timeout``          seconds to wait for a batch to fill (0.01)
``CATDOG_WORKERS``          ``--workers``                inference worker processes per model (1)
``CATDOG_API_SERVERS``      ``--api-servers``            HTTP server processes (one per worker)
``CATDOG_THREADS``          ``--threads``                onnxruntime threads per worker (0 = auto)
``CATDOG_MAX_UPLOAD_MB``    ``--max-upload-mb``          largest request body in MB (10)
``CATDOG_MAX_IMAGE_PIXELS`` ``--max-image-pixels``       largest decoded image, pixels (40000000)
``CATDOG_TIMEOUT``           ``--timeout``                seconds a request may wait for a worker (30)
``CATDOG_LOG_LEVEL``        ``--log-level``              ``debug|info|warning|error`` (info)
==========================  ===========================  ==========================================

SIGTERM and SIGINT stop the server and all its worker processes within a few seconds (it may run as
PID 1 in a container).
"""

import argparse
import json
import logging
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from catdog import DISPLAY_NAMES, CatDogError
from catdog.transforms import (
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessConfig,
    normalize,
    open_image,
    resize_and_crop,
)

logger = logging.getLogger("catdog.serve")

#: The ONNX metadata keys ``catdog export`` writes and the server reads.
METADATA_KEYS = ("classes", "model_name", "checkpoint_sha256", "image_size", "mean", "std")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ERROR_CODES = {
    400: "bad_request",
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
_USAGE_HINT = (
    "Send the image as a multipart upload in the field 'file' (curl -F file=@cat.jpg URL) or as the raw "
    "request body with its image content type (curl -H 'Content-Type: image/jpeg' --data-binary @cat.jpg URL)."
)


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServedModel:
    """One ONNX model to serve: its endpoint name, file, and what its metadata says."""

    name: str
    path: str
    config: PreprocessConfig
    classes: tuple[str, ...]
    input_name: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def api_path(self) -> str:
        return f"/predict/{self.name}"

    def describe(self) -> dict[str, Any]:
        """What ``/health`` tells about the model."""
        return {
            "path": self.path,
            "endpoint": self.api_path,
            "model_name": self.metadata.get("model_name"),
            "image_size": self.config.image_size,
            "classes": list(self.classes),
            "checkpoint_sha256": self.metadata.get("checkpoint_sha256"),
        }


def _session(path: str, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def load_model_info(name: str, path: str | os.PathLike[str]) -> ServedModel:
    """Open ``path`` with onnxruntime and read its catdog metadata; :class:`CatDogError` when unusable."""
    if not _NAME_RE.match(name):
        raise CatDogError(
            f"--model {name}=...: the name becomes the URL /predict/{name}; use letters, digits, '_', '-', '.'"
        )
    file = Path(path).expanduser()
    if not file.is_file():
        raise CatDogError(
            f"--model {name}={path}: file not found. Export one with `catdog export --ckpt <checkpoint> --out {path}`."
        )
    try:
        session = _session(str(file), threads=1)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise CatDogError(
            f"--model {name}={path}: cannot load it as an ONNX model ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else err!r}). Re-export it with `catdog export`."
        ) from err
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [key for key in METADATA_KEYS if key not in meta]
    if missing:
        raise CatDogError(
            f"--model {name}={path}: the ONNX file lacks the catdog metadata {missing}; export it with "
            "`catdog export` (which records the classes and the preprocessing)."
        )
    try:
        config = PreprocessConfig.from_metadata(meta)
        raw_classes = json.loads(meta["classes"])
        classes = tuple(str(raw_classes[str(i)]) for i in range(len(raw_classes)))
    except (CatDogError, ValueError, KeyError, TypeError) as err:
        raise CatDogError(f"--model {name}={path}: malformed catdog metadata ({err}); re-export it") from err
    if classes != DISPLAY_NAMES:
        raise CatDogError(f"--model {name}={path}: classes {list(classes)} are not {list(DISPLAY_NAMES)}")
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise CatDogError(f"--model {name}={path}: expected one image input (N, 3, H, W), found {inputs}")
    shape = inputs[0].shape
    if list(shape[1:]) != [3, config.image_size, config.image_size]:
        raise CatDogError(
            f"--model {name}={path}: input shape {shape} does not match the metadata's image_size "
            f"{config.image_size}; re-export it"
        )
    return ServedModel(name, str(file), config, classes, inputs[0].name, meta)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(level.upper())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (numerically stable)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# request reading (runs in the HTTP server process, per request, before batching)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Limits:
    models: dict[str, ServedModel]  # by api path
    max_upload_bytes: int
    max_image_pixels: int


def _client_error(status: int, code: str, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"error": code, "detail": detail})


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, stopping with 413 as soon as it exceeds ``limit`` bytes (chunked uploads too)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _client_error(
                413, "upload_too_large", f"the upload is larger than the limit of {limit} bytes (--max-upload-mb)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload_bytes(request: Request, limit: int) -> bytes:
    """The image bytes of a multipart (field ``file``) or raw-body upload; 4xx errors for anything else."""
    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";")[0].strip().lower()
    is_multipart = mime == "multipart/form-data"
    if not is_multipart and not mime.startswith(_RAW_TYPES):
        shown = mime or "none"
        raise _client_error(415, "unsupported_media_type", f"content type {shown!r} is not accepted. {_USAGE_HINT}")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _client_error(
            413,
            "upload_too_large",
            f"the upload is {int(length)} bytes, above the limit of {limit} bytes (--max-upload-mb)",
        )
    body = await _read_body(request, limit)
    if not is_multipart:
        if not body:
            raise _client_error(400, "empty_body", f"the request body is empty. {_USAGE_HINT}")
        return body

    async def once() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=16).parse()
    except MultiPartException as err:
        raise _client_error(400, "bad_request", f"malformed multipart upload: {err.message}") from err
    try:
        upload = form.get("file")
        if upload is None:
            fields = sorted(form.keys())
            raise _client_error(
                422, "missing_file", f"the multipart upload has no field 'file' (fields sent: {fields}). {_USAGE_HINT}"
            )
        if isinstance(upload, str):
            raise _client_error(422, "missing_file", f"the field 'file' is a text field, not a file. {_USAGE_HINT}")
        data = await upload.read()
    finally:
        await form.close()
    if not data:
        raise _client_error(400, "empty_body", "the uploaded file 'file' is empty")
    return data


def _decode(data: bytes, config: PreprocessConfig, max_pixels: int) -> np.ndarray:
    """Decode and resize/crop one upload: uint8 (size, size, 3). Any decoding failure is the client's (4xx)."""
    try:
        image = open_image(data, max_pixels=max_pixels)
        return np.asarray(resize_and_crop(image, config), dtype=np.uint8)
    except ImageTooLargeError as err:
        raise _client_error(413, "image_too_large", f"the image has too many pixels: {err}") from err
    except ImageDecodeError as err:
        raise _client_error(400, "invalid_image", f"the upload is not a decodable image: {err}") from err
    except Exception as err:  # malformed files make Pillow raise almost anything
        raise _client_error(
            400, "invalid_image", f"the upload is not a decodable image ({type(err).__name__}: {err})"
        ) from err


async def read_image(request: Request) -> np.ndarray:
    """FastAPI dependency behind ``decode_request``: the uploaded image, decoded and resized, or a 4xx error."""
    limits: _Limits = request.app.state.catdog
    model = limits.models[request.scope["path"]]
    data = await _upload_bytes(request, limits.max_upload_bytes)
    return await run_in_threadpool(_decode, data, model.config, limits.max_image_pixels)


# --------------------------------------------------------------------------------------------------
# the LitServe API (its methods run in the inference worker processes)
# --------------------------------------------------------------------------------------------------
class OnnxClassifierAPI(ls.LitAPI):
    """One ONNX classifier behind ``POST /predict/<name>``, with dynamic batching."""

    def __init__(
        self,
        model: ServedModel,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
        threads: int = 0,
        log_level: str = "info",
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout if max_batch_size > 1 else 0.0,
            api_path=model.api_path,
        )
        self.model = model
        self.threads = threads
        self.log_level = log_level
        self.session: Any = None

    def setup(self, device: str) -> None:
        _configure_logging(self.log_level)  # a fresh (spawned) process
        self.session = _session(self.model.path, threads=self.threads)
        logger.info(
            "model %r loaded from %s (%d px, batches up to %d)",
            self.model.name,
            self.model.path,
            self.model.config.image_size,
            self.max_batch_size,
        )

    def decode_request(self, request: Annotated[np.ndarray, Depends(read_image)]) -> np.ndarray:
        """uint8 (size, size, 3) from :func:`read_image` -> normalised float32 (3, size, size)."""
        return normalize(request, self.model.config)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities: (N, 2) for a batch, (2,) for a single image (batching off)."""
        single = x.ndim == 3
        images = x[None] if single else x
        logger.debug("model %r: batch of %d", self.model.name, len(images))
        (logits,) = self.session.run(None, {self.model.input_name: np.ascontiguousarray(images, np.float32)})
        probs = softmax(logits)
        return probs[0] if single else probs

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        class_id = int(np.argmax(output))
        return {
            "model": self.model.name,
            "label": self.model.classes[class_id],
            "class_id": class_id,
            "probabilities": {name: float(p) for name, p in zip(self.model.classes, output, strict=True)},
        }


# --------------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------------
def _error_response(status: int, error: str, detail: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _install_handlers(server: "ls.LitServer", models: Sequence[ServedModel]) -> None:
    """JSON errors, ``GET /health`` with the models' metadata, and a 404 naming the served models."""
    app = server.app
    names = [m.name for m in models]

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if isinstance(detail, dict) and "error" in detail:
            return JSONResponse(detail, status_code=exc.status_code, headers=getattr(exc, "headers", None))
        if exc.status_code == 404 and request.url.path.startswith("/predict"):
            return _error_response(
                404, "unknown_model", f"no model at {request.url.path}; served: {[f'/predict/{n}' for n in names]}"
            )
        code = _ERROR_CODES.get(exc.status_code, "error")
        return _error_response(exc.status_code, code, str(detail))

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(422, "unprocessable", str(exc.errors()))

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return _error_response(500, "internal_error", "the server failed to answer; see its log")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)

    async def health() -> JSONResponse:
        from litserve.utils import WorkerSetupStatus

        status = getattr(server, "workers_setup_status", None)
        states = dict(status) if status is not None else {}
        if states and all(v == WorkerSetupStatus.READY for v in states.values()):
            return JSONResponse({"status": "ok", "models": {m.name: m.describe() for m in models}})
        return _error_response(503, "not_ready", f"workers are starting: {states}")

    app.add_api_route("/health", health, methods=["GET"])


def build_server(
    models: Sequence[ServedModel],
    max_batch_size: int = 8,
    batch_timeout: float = 0.01,
    workers: int = 1,
    threads: int = 0,
    max_upload_mb: float = 10.0,
    max_image_pixels: int = 40_000_000,
    timeout: float = 30.0,
    log_level: str = "info",
) -> "ls.LitServer":
    """A :class:`litserve.LitServer` with one :class:`OnnxClassifierAPI` per model (not started)."""
    if not models:
        raise CatDogError("no model to serve: pass --model NAME=PATH or set CATDOG_MODELS")
    if max_batch_size < 1 or batch_timeout < 0 or workers < 1 or max_upload_mb <= 0 or max_image_pixels < 1:
        raise CatDogError(
            "--max-batch-size and --workers must be >= 1, --batch-timeout >= 0, --max-upload-mb and "
            "--max-image-pixels > 0"
        )
    apis = [OnnxClassifierAPI(m, max_batch_size, batch_timeout, threads, log_level) for m in models]
    server = ls.LitServer(
        apis,
        accelerator="cpu",
        workers_per_device=workers,
        timeout=timeout,
        healthcheck_path="/health/litserve",
    )
    server.app.state.catdog = _Limits(
        models={m.api_path: m for m in models},
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_image_pixels=max_image_pixels,
    )
    server.uvicorn_graceful_timeout = 1  # seconds an HTTP process gets to finish at shutdown
    _install_handlers(server, models)
    return server


def _stop_children(grace: float = 1.0) -> None:
    """Terminate, then kill, every child process still running (safety net behind LitServe's shutdown)."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join(1.0)


def run(
    server: "ls.LitServer",
    host: str = "0.0.0.0",
    port: int = 8000,
    api_servers: int | None = None,
    log_level: str = "info",
) -> int:
    """Run ``server`` until SIGTERM/SIGINT; returns 0 after a clean stop, every child process gone."""
    if host not in {"0.0.0.0", "127.0.0.1", "::"}:
        raise CatDogError(f"--host {host}: LitServe binds only 0.0.0.0, 127.0.0.1 or ::")
    if not 1024 <= port <= 65535:
        raise CatDogError(f"--port {port}: use a port from 1024 to 65535")

    main_pid = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a forked child (HTTP server, queue manager) inherited this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        # Once: the shutdown that follows must not be interrupted by a second signal.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        logger.info("%s received, stopping", signal.Signals(signum).name)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(
            host=host,
            port=port,
            num_api_servers=api_servers,
            log_level=log_level,
            generate_client_file=False,
        )
    except KeyboardInterrupt:
        pass
    except RuntimeError as err:  # LitServe: a worker failed in setup (its traceback is in the log above)
        raise CatDogError(f"the server could not start: {err}") from err
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_children()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def parse_model_specs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``NAME=PATH`` (or ``PATH``, named after the file) -> ``[(name, path)]``; names must be unique."""
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        name, sep, path = spec.partition("=")
        if not sep or Path(spec).exists() or not _NAME_RE.match(name.strip()):
            name, path = Path(spec).stem, spec
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise CatDogError(f"--model {spec!r}: expected NAME=PATH, e.g. pretrained=models/pretrained.onnx")
        if name in {n for n, _ in pairs}:
            raise CatDogError(f"--model {spec!r}: the name {name!r} is given twice")
        pairs.append((name, path))
    return pairs


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catdog serve",
        description="Serve exported ONNX models over HTTP (LitServe, onnxruntime; no torch). "
        "Each option falls back to the environment variable shown.",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a model to serve at POST /predict/NAME (repeat for several); env CATDOG_MODELS=NAME=PATH,NAME=PATH",
    )
    parser.add_argument("--host", default=_env("CATDOG_HOST", "0.0.0.0"), help="env CATDOG_HOST (0.0.0.0)")
    parser.add_argument("--port", type=int, default=_env("CATDOG_PORT", "8000"), help="env CATDOG_PORT (8000)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=_env("CATDOG_MAX_BATCH_SIZE", "8"),
        help="dynamic batching: most requests per batch, 1 turns it off; env CATDOG_MAX_BATCH_SIZE (8)",
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=_env("CATDOG_BATCH_TIMEOUT", "0.01"),
        help="seconds to wait for a batch to fill; env CATDOG_BATCH_TIMEOUT (0.01)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_env("CATDOG_WORKERS", "1"),
        help="inference processes per model; env CATDOG_WORKERS (1)",
    )
    parser.add_argument(
        "--api-servers",
        type=int,
        default=_env("CATDOG_API_SERVERS", "0"),
        help="HTTP server processes, 0 = one per inference worker; env CATDOG_API_SERVERS (0)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=_env("CATDOG_THREADS", "0"),
        help="onnxruntime threads per worker, 0 = onnxruntime's choice; env CATDOG_THREADS (0)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=_env("CATDOG_MAX_UPLOAD_MB", "10"),
        help="largest request body in MB (413 above); env CATDOG_MAX_UPLOAD_MB (10)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=_env("CATDOG_MAX_IMAGE_PIXELS", "40000000"),
        help="largest decoded image in pixels, guards against decompression bombs (413 above); "
        "env CATDOG_MAX_IMAGE_PIXELS (40000000)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=_env("CATDOG_TIMEOUT", "30"),
        help="seconds a request may wait for a worker (504 after); env CATDOG_TIMEOUT (30)",
    )
    parser.add_argument(
        "--log-level",
        default=_env("CATDOG_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="env CATDOG_LOG_LEVEL (info)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``catdog serve``: load and check every model, then serve until SIGTERM/SIGINT."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    specs = args.model or _env("CATDOG_MODELS", "").split(",")
    pairs = parse_model_specs(specs)
    if not pairs:
        raise CatDogError(
            "no model to serve: pass --model NAME=PATH (e.g. --model pretrained=models/pretrained.onnx) "
            "or set CATDOG_MODELS=pretrained=models/pretrained.onnx,scratch=models/scratch.onnx"
        )
    _configure_logging(args.log_level)
    models = [load_model_info(name, path) for name, path in pairs]
    for m in models:
        logger.info("serving %s at %s (%d px)", m.path, m.api_path, m.config.image_size)
    server = build_server(
        models,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        workers=args.workers,
        threads=args.threads,
        max_upload_mb=args.max_upload_mb,
        max_image_pixels=args.max_image_pixels,
        timeout=args.timeout,
        log_level=args.log_level,
    )
    return run(server, args.host, args.port, api_servers=args.api_servers or None, log_level=args.log_level)


if __name__ == "__main__":
    from catdog.cli import main as cli_main

    sys.exit(cli_main(["serve", *sys.argv[1:]]))
