"""Prometheus metrics for ``catdog serve``: ``GET /metrics`` in the Prometheus text format.

``catdog serve`` runs several processes (HTTP servers, one inference worker per model, see
``docs/serving.md``), so prometheus_client runs in its multiprocess mode: each process writes its counters
and histograms to files in ``PROMETHEUS_MULTIPROC_DIR``, and ``/metrics`` (in whichever HTTP process answers)
adds them up. The server makes that directory itself (:func:`prepare_multiprocess_dir`, in the main process
before any process starts) and removes it when it exits.

Where each figure is measured:

* :class:`RequestMetrics`, ASGI middleware outside every other one (the deadline middleware's own 503/504
  answers included): requests by model and status code, their latency, and every JSON error by its code;
* :class:`InferenceMetrics`, a LitServe callback in the inference workers: batch sizes and inference time;
* :class:`ServerStateCollector`, read at each scrape: models loaded (with their checkpoint sha256), worker
  and HTTP server restarts (the supervisor's shared counts) and each model's queue depth.

Refused requests are counted like any other answer: ``401`` with error ``unauthorized`` (no or a wrong API
key), ``503`` with error ``overloaded`` (past ``--max-queue``).

prometheus_client is imported only once the directory is set (it chooses its mode on import).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from types import SimpleNamespace
from typing import Any

import litserve as ls

from catdog.serving.health import model_states
from catdog.serving.models import ServedModel

logger = logging.getLogger("catdog.serve")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Request latency buckets in seconds (the default --timeout is 30 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
#: The largest error body :class:`RequestMetrics` reads to find its ``error`` code.
_MAX_ERROR_BODY = 65536

_owned_dir: str | None = None


def prepare_multiprocess_dir() -> str:
    """Create this server's metrics directory and point ``PROMETHEUS_MULTIPROC_DIR`` at it (once per process).

    Call it in the main process before any worker or HTTP server process starts: they inherit the variable.
    A value inherited from the environment is replaced, as files of an earlier run would be added in. The
    directory is removed when the main process exits.
    """
    global _owned_dir
    if _owned_dir is not None and os.environ.get(MULTIPROC_ENV) == _owned_dir:
        return _owned_dir
    _owned_dir = tempfile.mkdtemp(prefix="catdog-metrics-")
    atexit.register(_remove_dir, _owned_dir, os.getpid())  # first: whatever fails next, the directory goes
    os.environ[MULTIPROC_ENV] = _owned_dir
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # in case prometheus_client was imported before
    logger.debug("metrics: prometheus_client multiprocess files in %s", _owned_dir)
    return _owned_dir


def _remove_dir(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked child that inherited the handler
        shutil.rmtree(path, ignore_errors=True)


@cache
def instruments() -> SimpleNamespace:
    """This process's counters and histograms (made on first use, after the directory is set)."""
    from prometheus_client import Counter, Histogram

    return SimpleNamespace(
        requests=Counter(
            "catdog_requests", "Requests to POST /predict/<model>, by status code", ["model", "code"], registry=None
        ),
        latency=Histogram(
            "catdog_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        ),
        errors=Counter(
            "catdog_errors",
            "JSON error answers of /predict/<model> by error code (invalid_image, upload_too_large, timeout, ...)",
            ["model", "error"],
            registry=None,
        ),
        batch_size=Histogram(
            "catdog_batch_size", "Images per inference batch", ["model"], buckets=BATCH_BUCKETS, registry=None
        ),
        inference=Histogram(
            "catdog_inference_duration_seconds",
            "Seconds onnxruntime took per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        ),
    )


# --------------------------------------------------------------------------------------------------
# wiring
# --------------------------------------------------------------------------------------------------
def mount(server: ls.LitServer, models: Sequence[ServedModel]) -> None:
    """Add ``GET /metrics`` and :class:`RequestMetrics` to ``server`` (after its other middleware)."""
    prepare_multiprocess_dir()
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from starlette.responses import Response

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(ServerStateCollector(server, models))

    def scrape() -> Response:  # a plain function: FastAPI runs it in a thread (it reads files)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    server.app.add_api_route("/metrics", scrape, methods=["GET"], include_in_schema=False)
    server.app.add_middleware(RequestMetrics, models=[m.name for m in models])


# --------------------------------------------------------------------------------------------------
# the HTTP side
# --------------------------------------------------------------------------------------------------
class RequestMetrics:
    """ASGI middleware: counts and times every request to ``/predict/<model>`` and the error code it got.

    The error code is the ``error`` field of the JSON body of an answer of status 400 or above.
    """

    def __init__(self, app: Any, models: Sequence[str]) -> None:
        self.app = app
        self.paths = {f"/predict/{name}": name for name in models}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        model = self.paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        if model is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        body = bytearray()

        async def send_observed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status is not None and status >= 400:
                if len(body) < _MAX_ERROR_BODY:
                    body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    _record(model, status, started, error_code(bytes(body)))
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                _record(model, status or 200, started, None)
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            if status is None:  # the server's error handler answers 500 internal_error
                _record(model, 500, started, "internal_error")
            raise


def _record(model: str, status: int, started: float, error: str | None) -> None:
    metrics = instruments()
    metrics.requests.labels(model=model, code=str(status)).inc()
    metrics.latency.labels(model=model).observe(time.perf_counter() - started)
    if error is not None:
        metrics.errors.labels(model=model, error=error).inc()


def error_code(body: bytes) -> str:
    """The ``error`` field of a JSON error body; ``unknown`` when the body is not one."""
    try:
        code = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return "unknown"
    return code if isinstance(code, str) and code else "unknown"


class ServerStateCollector:
    """Figures read from the server's shared state at each scrape: models loaded, restarts."""

    def __init__(self, server: ls.LitServer, models: Sequence[ServedModel]) -> None:
        self.server = server
        self.models = list(models)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        restarts = self.server.app.state.catdog_restarts
        try:
            states = model_states(self.server, self.models, self.server.workers_per_device, restarts)
        except (OSError, EOFError):  # the manager process is gone: the server is stopping
            states = {}
        loaded = GaugeMetricFamily(
            "catdog_model_loaded",
            "1 while every worker of the model has it loaded (0 while starting, restarting or failed)",
            labels=["model", "checkpoint_sha256", "calibration"],
        )
        worker_restarts = CounterMetricFamily(
            "catdog_worker_restarts", "Inference worker processes replaced after they died, by model", labels=["model"]
        )
        for m in self.models:
            sha = m.metadata.get("checkpoint_sha256", "")
            loaded.add_metric([m.name, sha, m.calibration_method], 1.0 if states.get(m.name) == "ready" else 0.0)
            worker_restarts.add_metric([m.name], restarts.model(m.name))
        http_restarts = CounterMetricFamily(
            "catdog_http_server_restarts", "HTTP server processes replaced after they died", restarts.http_servers()
        )
        queue = self.server.app.state.catdog_queue
        depth = GaugeMetricFamily(
            "catdog_queue_depth",
            "Requests of the model in the server now (arrived, not yet answered; --max-queue bounds it)",
            labels=["model"],
        )
        for m in self.models:
            depth.add_metric([m.name], queue.depth(m.name))
        yield from (loaded, worker_restarts, http_restarts, depth)


# --------------------------------------------------------------------------------------------------
# the inference side
# --------------------------------------------------------------------------------------------------
class InferenceMetrics(ls.Callback):
    """LitServe callback (runs in the inference workers): the size of each batch and its inference time.

    LitServe's hooks do not see the batch, so :meth:`on_after_setup` wraps the API's ``batch`` to note its
    length; with batching off (``max_batch_size`` 1) every batch is one image.
    """

    def __init__(self) -> None:
        self._size = 1
        self._started = 0.0

    def on_after_setup(self, lit_api: ls.LitAPI, **kwargs: Any) -> None:
        lit_api.batch = self._counting(lit_api.batch)  # type: ignore[method-assign]
        instruments()  # the files exist before the first request

    def _counting(self, batch: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
        def counted(inputs: list[Any]) -> Any:
            self._size = len(inputs)
            return batch(inputs)

        return counted

    def on_before_predict(self, lit_api: ls.LitAPI, **kwargs: Any) -> None:
        self._started = time.perf_counter()
        if lit_api.max_batch_size == 1:
            self._size = 1

    def on_after_predict(self, lit_api: ls.LitAPI, **kwargs: Any) -> None:
        metrics = instruments()
        name = lit_api.model.name
        metrics.inference.labels(model=name).observe(time.perf_counter() - self._started)
        metrics.batch_size.labels(model=name).observe(self._size)
