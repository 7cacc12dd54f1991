"""Who may use the models, and how many requests each model holds: API keys and the queue bound.

* :class:`ApiKeys`: the keys ``--api-key`` / ``--api-key-file`` give. When there is at least one,
  ``POST /predict/<name>`` needs one of them in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
  :class:`Admission` checks it first (before the queue bound); LitServe's ``authorize`` hook
  (:meth:`catdog.serving.api.OnnxClassifierAPI.authorize`) checks it again at the endpoint, so the API stays
  guarded wherever it is served. Both call :meth:`ApiKeys.check`. Keys are compared as SHA-256 digests
  with :func:`hmac.compare_digest` (constant time, whatever the lengths), are never logged, and a missing or
  wrong key gets ``401 {"error": "unauthorized"}``. ``/livez``, ``/readyz``, ``/health``, ``/metrics`` and
  the page stay open.
* :class:`Admission`: ASGI middleware bounding the requests of each model that are in the server at once
  (arrived, not yet answered; every HTTP process together) to ``--max-queue``. One more gets ``503
  {"error": "overloaded"}`` with ``Retry-After`` at once, without reading its body; the other models are
  not affected. The key is checked first: a request without a valid key gets its 401 whatever the queue
  holds, and never takes a place in it. :class:`QueueDepth` holds the counts in shared memory (``/metrics`` reads them).
"""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from catdog import CatDogError
from catdog.serving.http import client_error, error_response

#: The shortest key accepted: a guessable key is no key.
MIN_KEY_LENGTH = 16
#: Rows of :class:`QueueDepth`: one per HTTP server process (more processes share rows).
MAX_HTTP_ROWS = 64
KEY_HINT = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ApiKeys:
    """The accepted API keys, kept only as SHA-256 digests."""

    def __init__(self, keys: Sequence[str] = ()) -> None:
        self._digests = tuple(_digest(key) for key in keys)

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:  # never the keys, even in a debugger or a log line
        return f"ApiKeys({len(self._digests)} key(s))"

    def accepts(self, key: str) -> bool:
        """Whether ``key`` is one of the keys; every key is compared (constant time, no early exit)."""
        given = _digest(key)
        return any([hmac.compare_digest(given, digest) for digest in self._digests])  # noqa: C419 (all of them)

    def check(self, authorization: str | None, x_api_key: str | None) -> None:
        """Raise the 401 error unless a key is required and one of the two headers holds an accepted one."""
        if not self.required:
            return
        scheme, _, token = (authorization or "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else (x_api_key or "").strip()
        if not key:
            raise client_error(
                401,
                "unauthorized",
                "this server needs an API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not self.accepts(key):
            raise client_error(401, "unauthorized", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})


def load_api_keys(value: str = "", file: str = "") -> ApiKeys:
    """The keys of ``--api-key`` (comma-separated) and ``--api-key-file`` (one a line, ``#`` comments).

    :class:`CatDogError` names the option (never the key) when a key is too short or the file unreadable.
    """
    keys = [key.strip() for key in value.split(",") if key.strip()]
    if file:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            reason = type(err).__name__
            raise CatDogError(f"--api-key-file {file}: cannot read it ({reason}); give a text file") from err
        found = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not found:
            raise CatDogError(f"--api-key-file {file}: the file holds no key (one key a line); {KEY_HINT}")
        keys += found
    for index, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_LENGTH or any(ch.isspace() for ch in key):
            raise CatDogError(
                f"--api-key / --api-key-file: key {index} of {len(keys)} is shorter than {MIN_KEY_LENGTH} "
                f"characters or holds a space; {KEY_HINT}"
            )
    return ApiKeys(keys)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class QueueDepth:
    """Requests of each model in the server now, in shared memory: a row per HTTP process, a column per model.

    Made before the HTTP processes are forked; each process writes its own row (a replacement process
    clears the row of the one it replaces, so the requests a dead process held are not counted forever).
    """

    def __init__(self, models: Sequence[str]) -> None:
        self.models = tuple(models)
        self._counts = multiprocessing.Array("q", MAX_HTTP_ROWS * len(self.models))

    def _cell(self, row: int, model: str) -> int:
        return (row % MAX_HTTP_ROWS) * len(self.models) + self.models.index(model)

    def depth(self, model: str) -> int:
        """Requests of ``model`` in the server now (every HTTP process)."""
        column = self.models.index(model)
        return int(sum(self._counts[column :: len(self.models)]))

    def enter(self, row: int, model: str, limit: int) -> int | None:
        """Count one more request of ``model`` unless ``limit`` are in already; the depth it found, or None."""
        with self._counts.get_lock():
            depth = self.depth(model)
            if limit and depth >= limit:
                return None
            self._counts[self._cell(row, model)] += 1
            return depth

    def leave(self, row: int, model: str) -> None:
        with self._counts.get_lock():
            cell = self._cell(row, model)
            self._counts[cell] = max(0, self._counts[cell] - 1)

    def clear(self, row: int) -> None:
        with self._counts.get_lock():
            for model in self.models:
                self._counts[self._cell(row, model)] = 0


class Admission:
    """ASGI middleware: at most ``max_queue`` requests of each model in the server; ``503 overloaded`` past it."""

    def __init__(
        self, app: Any, models: Sequence[str], max_queue: int, depth: QueueDepth, keys: ApiKeys | None = None
    ) -> None:
        self.app = app
        self.paths = {f"/predict/{name}": name for name in models}
        self.max_queue = max_queue
        self.depth = depth
        self.keys = keys or ApiKeys()
        self._row: int | None = None  # this process's row, cleared on its first request

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        model = self.paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        if model is None:
            await self.app(scope, receive, send)
            return
        refusal = self._key_refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        row = self._claim_row(scope)
        if self.depth.enter(row, model, self.max_queue) is None:
            response = error_response(
                503,
                "overloaded",
                f"model {model!r} already holds {self.max_queue} requests (--max-queue); retry after 1 s",
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.depth.leave(row, model)

    def _key_refusal(self, scope: dict) -> Any:
        """The 401 answer for a request without an accepted key, or None (no key needed, or a good one)."""
        if not self.keys.required:
            return None
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
        try:
            self.keys.check(headers.get("authorization"), headers.get("x-api-key"))
        except HTTPException as error:
            return error_response(error.status_code, **error.detail, headers=error.headers)
        return None

    def _claim_row(self, scope: dict) -> int:
        if self._row is None:
            queue_id = getattr(scope.get("app"), "response_queue_id", None)
            self._row = int(queue_id or 0)
            self.depth.clear(self._row)  # what a process that had this row before held when it died
        return self._row
