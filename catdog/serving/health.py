"""The server's three state endpoints, each answering a different question.

* ``GET /livez``: is the process able to answer at all? Always ``200`` while an HTTP server process runs
  (a liveness probe: failing it means "restart me"; a worker being replaced is no reason to).
* ``GET /readyz``: may requests be sent here now? ``200`` only when every model has every worker loaded,
  ``503`` while one starts, is being replaced, or failed (a readiness probe: failing it means "send
  traffic elsewhere for a while").
* ``GET /health``: the detail for people and dashboards: each model's state, metadata and restarts; the
  same status code as ``/readyz``.

All three stay open when the server requires an API key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import litserve as ls
from fastapi.responses import JSONResponse

from catdog.serving.http import error_response
from catdog.serving.models import ServedModel
from catdog.serving.supervise import RestartCounter


def model_states(server: ls.LitServer, models: Sequence[ServedModel], workers: int, restarts: RestartCounter) -> dict:
    """Each model's state: ``ready`` (every worker loaded), ``starting``, ``restarting`` or ``failed``."""
    from litserve.utils import WorkerSetupStatus

    status = getattr(server, "workers_setup_status", None)
    states = dict(status) if status is not None else {}
    result = {}
    for m in models:
        values = [states.get(f"{m.name}_{i}") for i in range(workers)]
        if all(v == WorkerSetupStatus.READY for v in values):
            result[m.name] = "ready"
        elif any(v == WorkerSetupStatus.ERROR for v in values):
            result[m.name] = "failed"
        else:
            result[m.name] = "restarting" if restarts.model(m.name) else "starting"
    return result


def mount(
    server: ls.LitServer, models: Sequence[ServedModel], workers: int, restarts: RestartCounter, api_key: bool
) -> None:
    """Add ``GET /livez``, ``GET /readyz`` and ``GET /health`` to ``server``."""

    def states() -> dict[str, str] | None:
        try:
            return model_states(server, models, workers, restarts)
        except (OSError, EOFError):  # the manager process is gone; the supervisor is stopping the server
            return None

    async def livez() -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def readyz() -> JSONResponse:
        current = states()
        if current is None:
            return _stopping()
        waiting = _waiting(current)
        if not waiting:
            return JSONResponse({"status": "ready"})
        return error_response(503, "not_ready", waiting, headers={"Retry-After": "1"})

    async def health() -> JSONResponse:
        current = states()
        if current is None:
            return _stopping()
        info = {m.name: {**m.describe(), "status": current[m.name], "restarts": restarts.model(m.name)} for m in models}
        waiting = _waiting(current)
        if not waiting:
            body = {"status": "ok", "models": info, "http_server_restarts": restarts.http_servers()}
            return JSONResponse({**body, "api_key_required": api_key})
        body = {"error": "not_ready", "detail": waiting, "models": info, "api_key_required": api_key}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    routes: dict[str, Callable[[], Any]] = {"/livez": livez, "/readyz": readyz, "/health": health}
    for path, route in routes.items():
        server.app.add_api_route(path, route, methods=["GET"])


def _waiting(states: dict[str, str]) -> str:
    """``model 'a' is starting, 'b' is restarting``; empty when every model is ready."""
    waiting = ", ".join(f"{name!r} is {state}" for name, state in states.items() if state != "ready")
    return f"model {waiting}" if waiting else ""


def _stopping() -> JSONResponse:
    return error_response(503, "not_ready", "the server is stopping: its manager process is gone")
