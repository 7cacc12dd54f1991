"""Server assembly for ``catdog serve``: the LitServer, ``GET /health``, extra routes, and running it.

Extension points: :func:`callbacks` returns the LitServe callbacks the server is built with, and
:func:`mount_extras` adds routes beyond ``/predict/<name>`` and ``/health`` (e.g. ``/metrics`` or a page
at ``/``). Both are called once by :func:`build_server`, in the main process, before any HTTP server
process is forked.
"""

import errno
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

import litserve as ls
from fastapi.responses import JSONResponse

from catdog import CatDogError
from catdog.serving.api import OnnxClassifierAPI
from catdog.serving.http import Limits, error_response, install_error_handlers
from catdog.serving.models import ServedModel

logger = logging.getLogger("catdog.serve")


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
) -> ls.LitServer:
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
        callbacks=callbacks(models),
    )
    server.app.state.catdog = Limits(
        models={m.api_path: m for m in models},
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_image_pixels=max_image_pixels,
    )
    server.uvicorn_graceful_timeout = 1  # seconds an HTTP process gets to finish at shutdown
    install_error_handlers(server.app, models)
    server.app.add_api_route("/health", _health_route(server, models), methods=["GET"])
    mount_extras(server, models)
    return server


def callbacks(models: Sequence[ServedModel]) -> list[ls.Callback]:
    """LitServe callbacks the server is built with (none yet)."""
    return []


def mount_extras(server: ls.LitServer, models: Sequence[ServedModel]) -> None:
    """Routes, middleware or state beyond ``/predict/<name>`` and ``/health`` (none yet)."""


def _health_route(server: ls.LitServer, models: Sequence[ServedModel]) -> Any:
    async def health() -> JSONResponse:
        from litserve.utils import WorkerSetupStatus

        status = getattr(server, "workers_setup_status", None)
        states = dict(status) if status is not None else {}
        if states and all(v == WorkerSetupStatus.READY for v in states.values()):
            return JSONResponse({"status": "ok", "models": {m.name: m.describe() for m in models}})
        return error_response(503, "not_ready", f"workers are starting: {states}")

    return health


def run(
    server: ls.LitServer,
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
    check_port_free(host, port)

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
        stop_children()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def check_port_free(host: str, port: int) -> None:
    """:class:`CatDogError` naming the port when ``host:port`` cannot be bound (checked before anything starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            sock.bind((host, port))
        except OSError as err:
            reason = "is already in use" if err.errno == errno.EADDRINUSE else f"cannot be bound ({err.strerror})"
            raise CatDogError(
                f"--port {port}: port {port} on {host} {reason}; stop what listens there or choose another "
                "port with --port (or CATDOG_PORT)"
            ) from err


def stop_children(grace: float = 1.0) -> None:
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
