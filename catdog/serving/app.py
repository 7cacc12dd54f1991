"""Server assembly for ``catdog serve``: the LitServer, its middleware and routes, and running it.

Extension points: :func:`callbacks` returns the LitServe callbacks the server is built with, and
:func:`mount_extras` adds routes beyond ``/predict/<name>`` and the state endpoints of
:mod:`catdog.serving.health` (e.g. ``/metrics`` or a page
at ``/``). Both are called once by :func:`build_server`, in the main process, before any HTTP server
process is forked. ``server.app.state.catdog_restarts`` is the :class:`RestartCounter` of worker and HTTP
server restarts (shared memory, readable from the HTTP processes, e.g. for metrics).
"""

import copy
import errno
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import litserve as ls
import uvicorn
from litserve.server import _Server as LitServeUvicorn

from catdog import CatDogError
from catdog.serving import health, metrics, page
from catdog.serving.access import Admission, ApiKeys, QueueDepth
from catdog.serving.api import OnnxClassifierAPI
from catdog.serving.http import Deadline, ExpiringBuffer, Limits, install_error_handlers
from catdog.serving.models import ServedModel
from catdog.serving.supervise import RestartCounter, Supervisor

logger = logging.getLogger("catdog.serve")


class CatDogServer(ls.LitServer):
    """A LitServer whose processes are watched by :class:`Supervisor` instead of LitServe's own monitor."""

    supervisor: Supervisor

    def _start_worker_monitoring(self, manager: Any, uvicorn_workers: dict[Any, Any]) -> None:
        self.supervisor.start(manager, uvicorn_workers)

    def _start_server(
        self,
        port: int,
        num_uvicorn_servers: int,
        log_level: str,
        sockets: list,
        uvicorn_worker_type: str,
        **kwargs: Any,
    ) -> dict[int, Any]:
        self._http_start = (port, log_level, sockets, uvicorn_worker_type, kwargs)
        return super()._start_server(port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs)

    def restart_http_server(self, response_queue_id: int) -> Any:
        """Fork a new HTTP server process for ``response_queue_id`` on the same listening socket.

        The same steps as one round of LitServe's ``_start_server`` (litserve 0.2.x), for one process.
        """
        port, log_level, sockets, worker_type, kwargs = self._http_start
        if worker_type != "process":
            raise RuntimeError(f"cannot restart an HTTP server of type {worker_type!r}")
        self.app.response_queue_id = response_queue_id
        app = copy.copy(self.app)
        self._prepare_app_run(app)
        config = uvicorn.Config(
            app=app,
            host="0.0.0.0",
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=self.uvicorn_graceful_timeout,
            **kwargs,
        )
        server = LitServeUvicorn(config=config)
        name = f"LitServer-{response_queue_id}"
        process = multiprocessing.get_context("fork").Process(
            target=server.run, args=(response_queue_id, sockets), name=name
        )
        process.start()
        return process


@dataclass(frozen=True)
class ServeSettings:
    """How ``catdog serve`` batches, bounds and guards requests (the command-line options, in one value)."""

    max_batch_size: int = 8
    batch_timeout: float = 0.01
    workers: int = 1
    threads: int = 0
    max_upload_mb: float = 10.0
    max_image_pixels: int = 40_000_000
    timeout: float = 30.0
    log_level: str = "info"
    max_restarts: int = 5
    max_queue: int = 0  # requests of one model in the server at once; 0: no bound
    api_keys: ApiKeys = field(default_factory=ApiKeys)

    def check(self) -> None:
        """:class:`CatDogError` naming the options whose values cannot work."""
        if self.max_batch_size < 1 or self.batch_timeout < 0 or self.workers < 1:
            raise CatDogError("--max-batch-size and --workers must be >= 1, --batch-timeout >= 0")
        if self.max_upload_mb <= 0 or self.max_image_pixels < 1:
            raise CatDogError("--max-upload-mb and --max-image-pixels must be > 0")
        if self.timeout <= 0 or self.max_restarts < 0 or self.max_queue < 0:
            raise CatDogError("--timeout must be > 0, --max-restarts and --max-queue >= 0 (--max-queue 0: no bound)")


def build_server(models: Sequence[ServedModel], settings: ServeSettings | None = None, **options: Any) -> CatDogServer:
    """A :class:`CatDogServer` with one :class:`OnnxClassifierAPI` per model (not started).

    ``options`` are :class:`ServeSettings` fields (``build_server(models, max_batch_size=1)``).
    """
    if not models:
        raise CatDogError("no model to serve: pass --model NAME=PATH or set CATDOG_MODELS")
    s = replace(settings or ServeSettings(), **options)
    s.check()
    apis = [OnnxClassifierAPI(m, s.max_batch_size, s.batch_timeout, s.threads, s.log_level) for m in models]
    server = CatDogServer(
        apis,
        accelerator="cpu",
        workers_per_device=s.workers,
        timeout=s.timeout,
        healthcheck_path="/health/litserve",
        callbacks=callbacks(models),
    )
    names = [m.name for m in models]
    restarts = RestartCounter(names)
    server.supervisor = Supervisor(server, restarts, max_restarts=s.max_restarts)
    server.app.state.catdog = Limits(
        models={m.api_path: m for m in models},
        max_upload_bytes=int(s.max_upload_mb * 1024 * 1024),
        max_image_pixels=s.max_image_pixels,
    )
    server.app.state.catdog_restarts = restarts  # read by /health (and by metrics)
    server.app.state.catdog_keys = s.api_keys  # read by OnnxClassifierAPI.authorize
    server.app.state.catdog_queue = depth = QueueDepth(names)  # read by Admission (and by metrics)
    server.uvicorn_graceful_timeout = 1  # seconds an HTTP process gets to finish at shutdown
    install_error_handlers(server.app, models)
    pending = server.response_buffer = ExpiringBuffer(max_age=2 * s.timeout + 5)  # a handler waits `timeout` at most
    server.app.add_middleware(Deadline, timeout=s.timeout, models=names, restarts=restarts, pending=pending)
    server.app.add_middleware(  # outside the deadline; the key before the queue
        Admission, models=names, max_queue=s.max_queue, depth=depth, keys=s.api_keys
    )
    health.mount(server, models, s.workers, restarts, api_key=s.api_keys.required)
    mount_extras(server, models)
    return server


def callbacks(models: Sequence[ServedModel]) -> list[ls.Callback]:
    """LitServe callbacks the server is built with: batch sizes and inference time for ``/metrics``."""
    metrics.prepare_multiprocess_dir()  # before any worker process starts
    return [metrics.InferenceMetrics()]


def mount_extras(server: ls.LitServer, models: Sequence[ServedModel]) -> None:
    """Routes and middleware beyond ``/predict/<name>`` and the state endpoints: ``GET /metrics``, the page at ``/``.

    Called after the deadline and admission middleware are added, so the metrics middleware sits outside
    them (and counts the 503/504 answers they send).
    """
    metrics.mount(server, models)
    page.mount(server)


class ServerFailure(CatDogError):
    """The running server lost a process it cannot replace, or a model crash-loops: exit status 1."""


def run(
    server: CatDogServer,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_servers: int | None = None,
    log_level: str = "info",
) -> int:
    """Run ``server`` until SIGTERM/SIGINT; returns 0 after a clean stop, every child process gone.

    Raises :class:`ServerFailure` (after stopping every process) when the supervisor gives up.
    """
    if host not in {"0.0.0.0", "127.0.0.1", "::"}:
        raise CatDogError(f"--host {host}: LitServe binds only 0.0.0.0, 127.0.0.1 or ::")
    if not 1024 <= port <= 65535:
        raise CatDogError(f"--port {port}: use a port from 1024 to 65535")
    check_port_free(host, port)

    main_pid = os.getpid()
    supervisor = server.supervisor

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a forked child (HTTP server, queue manager) inherited this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        # Once: the shutdown that follows must not be interrupted by a second signal.
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        supervisor.halt()  # no restarts while LitServe stops the processes
        if signum != signal.SIGUSR1:  # SIGUSR1: the supervisor's own stop, already logged
            logger.info("%s received, stopping", signal.Signals(signum).name)
        raise KeyboardInterrupt

    supervisor.on_fatal = _wake_main_thread
    previous = {sig: signal.signal(sig, stop) for sig in _STOP_SIGNALS}
    try:
        server.run(host=host, port=port, num_api_servers=api_servers, log_level=log_level, generate_client_file=False)
    except KeyboardInterrupt:
        pass
    except RuntimeError as err:  # LitServe: a worker failed in setup (its reason is in the log above)
        if supervisor.fatal is None:
            raise CatDogError(f"the server could not start: {err}") from err
    except (OSError, EOFError):  # the main thread's connection to the manager broke: the supervisor says why
        supervisor.check()
        if supervisor.fatal is None:
            raise
    finally:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        supervisor.halt()
        stop_children()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if supervisor.fatal:
        raise ServerFailure(supervisor.fatal)
    return 0


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def _wake_main_thread() -> None:
    """Interrupt LitServe's wait in the main thread (its SIGUSR1 handler stops the server)."""
    if threading.current_thread() is not threading.main_thread():
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)


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
