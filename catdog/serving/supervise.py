"""Supervision of ``catdog serve``'s processes: dead workers are replaced, a dead manager stops the server.

The main process runs a :class:`Supervisor` thread that checks, a few times a second:

* each inference worker: a dead one (killed by the OOM killer, a crash, ``kill -9``) is started again
  for its model, with one log line naming the model, the exit signal and the restart. The other models'
  workers are separate processes and never notice. More than ``max_restarts`` restarts of one model
  within ``window`` seconds is a crash loop: the server stops with exit status 1 and a clear message.
* each HTTP server process: a dead one is forked again on the same listening socket (same bound).
* the multiprocessing manager process, which holds every request queue and cannot be replaced: when it
  dies the server stops at once with exit status 1, so that the container's restart policy starts it again.

:class:`RestartCounter` keeps the restart counts in shared memory: the supervisor writes them, the HTTP
processes (forked after it is made) read them for ``/health`` (and for metrics).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("catdog.serve")

#: Seconds between an HTTP server process's death and its replacement (see :meth:`Supervisor.check`).
HTTP_RESTART_DELAY = 1.5


class RestartCounter:
    """Restarts of each model's inference workers and of the HTTP server processes, in shared memory."""

    def __init__(self, models: Sequence[str]) -> None:
        self.models = tuple(models)
        self._counts = multiprocessing.RawArray("q", len(self.models) + 1)  # the last slot: HTTP servers

    def model(self, name: str) -> int:
        """How many times a worker of model ``name`` was restarted."""
        return int(self._counts[self.models.index(name)])

    def http_servers(self) -> int:
        """How many times an HTTP server process was restarted."""
        return int(self._counts[len(self.models)])

    def add_model(self, name: str) -> int:
        index = self.models.index(name)
        self._counts[index] += 1
        return int(self._counts[index])

    def add_http_server(self) -> int:
        self._counts[len(self.models)] += 1
        return int(self._counts[len(self.models)])

    def as_dict(self) -> dict[str, Any]:
        return {"models": {name: self.model(name) for name in self.models}, "http_servers": self.http_servers()}


def describe_exit(process: Any) -> str:
    """How a finished process ended: ``killed by SIGKILL``, ``exited with status 3``, ``exited``."""
    code = process.exitcode
    if code is None:
        return "is running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}" if code else "exited"


class Supervisor:
    """Watches the inference workers, the HTTP server processes and the manager of a running LitServer."""

    def __init__(
        self,
        server: Any,
        restarts: RestartCounter,
        max_restarts: int = 5,
        window: float = 600.0,
        interval: float = 0.2,
    ) -> None:
        self.server = server
        self.restarts = restarts
        self.max_restarts = max_restarts
        self.window = window
        self.interval = interval
        #: Why the server must stop (set once, by the supervisor); ``None`` while all is well.
        self.fatal: str | None = None
        #: Called once when :attr:`fatal` is set (``run`` uses it to wake the main thread).
        self.on_fatal: Callable[[], None] = lambda: None
        self._stopping = threading.Event()
        self._history: dict[str, deque[float]] = {}
        self._manager: Any = None
        self._http: dict[Any, Any] = {}
        self._dead_since: dict[Any, float] = {}
        self._thread: threading.Thread | None = None

    def start(self, manager: Any, http_servers: dict[Any, Any]) -> None:
        """Start watching; ``http_servers`` is LitServe's own dict of HTTP processes (replaced in place)."""
        self._manager, self._http = manager, http_servers
        workers = [f"{name} pid {proc.pid}" for (_, name, _), proc in zip(self._slots(), self._workers(), strict=True)]
        logger.info(
            "processes: manager pid %s; HTTP servers pids %s; inference workers: %s",
            self._manager_process().pid if self._manager_process() else "?",
            [proc.pid for proc in http_servers.values()],
            ", ".join(workers),
        )
        self._thread = threading.Thread(target=self._loop, name="catdog-supervisor", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """Stop watching: no restart from now on (the server is shutting its processes down)."""
        self._stopping.set()

    def check(self) -> None:
        """One round of checks (the thread calls it every ``interval`` seconds)."""
        manager = self._manager_process()
        if not self.fatal and manager is not None and not manager.is_alive():
            self._fail(
                f"the multiprocessing manager process (pid {manager.pid}) {describe_exit(manager)}; it holds every "
                "request queue and cannot be replaced: stopping with exit status 1 so that the restart policy "
                "starts catdog serve again"
            )
            return
        if self._stopping.is_set():
            return
        for index, ((api, name, worker_id), proc) in enumerate(zip(self._slots(), self._workers(), strict=True)):
            if not proc.is_alive() and not self._stopping.is_set():
                self._restart_worker(index, api, name, worker_id, proc)
        for key, proc in list(self._http.items()):
            if proc.is_alive():
                continue
            # The manager's thread that served the dead process may still hold a pending get on its response
            # queue (LitServe polls with a 1 s timeout) and would swallow one answer meant for a replacement.
            dead_since = self._dead_since.setdefault(key, time.monotonic())
            if time.monotonic() - dead_since >= HTTP_RESTART_DELAY and not self._stopping.is_set():
                del self._dead_since[key]
                self._restart_http(key, proc)

    # ----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.check()
            except Exception as err:  # never let the watcher die silently
                self._fail(f"the process supervisor failed ({type(err).__name__}: {err}); stopping with exit status 1")

    def _manager_process(self) -> Any:
        return getattr(self._manager, "_process", None)

    def _workers(self) -> list[Any]:
        return self.server.inference_workers

    def _slots(self) -> list[tuple[Any, str, int]]:
        """(LitAPI, model name, worker id) of each entry of ``server.inference_workers``, in LitServe's order."""
        slots = []
        for api in self.server.litapi_connector:
            count = len(self.server._inference_workers_config_for_api(api.api_path))
            slots += [(api, api.model.name, worker_id) for worker_id in range(count)]
        return slots

    def _within_budget(self, key: str) -> bool:
        now = time.monotonic()
        history = self._history.setdefault(key, deque())
        history.append(now)
        while history and history[0] < now - self.window:
            history.popleft()
        return len(history) <= self.max_restarts

    def _restart_worker(self, index: int, api: Any, name: str, worker_id: int, proc: Any) -> None:
        from litserve.utils import WorkerSetupStatus

        how = describe_exit(proc)
        status = getattr(self.server, "workers_setup_status", None)
        if status is not None and status.get(f"{name}_{worker_id}") == WorkerSetupStatus.ERROR:
            how = "could not load its model"
        if not self._within_budget(f"model:{name}"):
            self._fail(
                f"model {name!r}: its inference worker {how} again, more than {self.max_restarts} restarts within "
                f"{self.window:.0f} s (--max-restarts): stopping with exit status 1"
            )
            return
        count = self.restarts.add_model(name)
        self._workers()[index] = self.server.launch_single_inference_worker(api, worker_id)
        logger.error(
            "model %r: inference worker %d (pid %s) %s; restarting it as pid %s (restart %d); its requests in flight "
            "are answered 503/504, the other models are not affected",
            name,
            worker_id,
            proc.pid,
            how,
            self._workers()[index].pid,
            count,
        )

    def _restart_http(self, key: Any, proc: Any) -> None:
        how = describe_exit(proc)
        if not self._within_budget("http"):
            self._fail(
                f"HTTP server process {proc.name} {how} again, more than {self.max_restarts} restarts within "
                f"{self.window:.0f} s (--max-restarts): stopping with exit status 1"
            )
            return
        count = self.restarts.add_http_server()
        replacement = self.server.restart_http_server(key)
        self._http[key] = replacement
        logger.error(
            "HTTP server process %s (pid %s) %s; replaced by pid %s (restart %d); its open connections were lost",
            proc.name,
            proc.pid,
            how,
            replacement.pid,
            count,
        )

    def _fail(self, message: str) -> None:
        if self.fatal:
            return
        self.fatal = message
        self._stopping.set()
        logger.error("%s", message)
        self.on_fatal()
