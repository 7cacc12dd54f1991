"""Pieces of the serving supervision on their own: the deadline, the restart counter, the response buffer."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import time

import pytest
from serve_helpers import asgi_call, status_of

from catdog.serving.http import Deadline, ExpiringBuffer
from catdog.serving.supervise import RestartCounter, describe_exit


def _call(app: Deadline, path: str = "/predict/a") -> tuple[int, dict, float]:
    """Send one request through ``app``; (status, JSON body, seconds taken)."""
    started = time.monotonic()
    messages = asgi_call(app, path)
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status_of(messages), json.loads(body), time.monotonic() - started


def _app(delay: float, during: object = None) -> object:
    async def app(scope: dict, receive: object, send: object) -> None:
        if during is not None:
            during()  # type: ignore[operator]
        await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    return app


def test_deadline_answers_504_or_503_when_the_app_does_not_answer_in_time() -> None:
    counter = RestartCounter(["a", "b"])
    assert _call(Deadline(_app(0.01), 1.0, ["a"], counter))[:2] == (200, {"ok": True})
    status, body, took = _call(Deadline(_app(5.0), 0.2, ["a"], counter))
    assert (status, body["error"]) == (504, "timeout") and "0.2 s (--timeout)" in body["detail"]
    assert took < 4.0  # without the deadline it takes the app's 5 s; a busy shared machine adds well under 4
    status, body, _ = _call(Deadline(_app(5.0, lambda: counter.add_model("a")), 0.2, ["a"], counter))
    assert (status, body["error"]) == (503, "worker_restarted") and "'a'" in body["detail"]
    status, body, _ = _call(Deadline(_app(0.5), 0.1, ["a"], counter), path="/health")  # not a model path
    assert (status, body) == (200, {"ok": True})


def _read_after(counter: RestartCounter, go: object, out: object) -> None:
    go.wait(10)  # type: ignore[attr-defined]
    out.put((counter.model("b"), counter.http_servers()))  # type: ignore[attr-defined]


@pytest.mark.skipif(os.name != "posix", reason="HTTP server processes are forked")
def test_restart_counts_made_after_a_fork_are_seen_by_the_child() -> None:
    """The HTTP processes are forked before any restart: they must still see the supervisor's counts."""
    counter = RestartCounter(["a", "b"])
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_read_after, args=(counter, go, out))
    child.start()
    counter.add_model("b")
    counter.add_model("b")
    counter.add_http_server()
    go.set()
    assert out.get(timeout=10) == (2, 1)
    child.join(10)
    assert counter.as_dict() == {"models": {"a": 0, "b": 2}, "http_servers": 1}


def _exit_with(code: int) -> None:
    os._exit(code)


def _sleep() -> None:
    time.sleep(30)


def test_describe_exit_names_the_signal_or_status() -> None:
    ctx = multiprocessing.get_context("spawn")
    killed = ctx.Process(target=_sleep)
    killed.start()
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(10)
    failed = ctx.Process(target=_exit_with, args=(3,))
    failed.start()
    failed.join(10)
    assert (describe_exit(killed), describe_exit(failed)) == ("killed by SIGKILL", "exited with status 3")


def test_expiring_buffer_forgets_only_old_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    buffer = ExpiringBuffer(max_age=10)
    buffer["old"] = 1
    now[0] = 105.0
    buffer["new"] = 2
    buffer["answered"] = 3
    assert buffer.pop("answered") == 3 and buffer.pop("missing", None) is None
    now[0] = 112.0
    assert buffer.prune() == 1
    assert dict(buffer) == {"new": 2}
    now[0] = 120.0
    assert buffer.prune() == 1 and not buffer
