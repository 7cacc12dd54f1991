"""``catdog serve`` as a child process, and the two requests a client makes (standard library only).

:class:`Server` starts ``python -m catdog serve ...`` with its output in a log file, waits for ``GET /health``
and stops it with SIGTERM (SIGKILL of its process group after a timeout); :func:`post_image` sends what
``curl -F file=@PATH URL`` sends.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from catdog import CatDogError

#: How long ``catdog serve`` may take to answer ``/health`` (model loading, worker start-up).
SERVER_START_TIMEOUT = 180.0

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def post_image(url: str, path: Path, timeout: float = 60.0) -> tuple[int, dict]:
    """POST ``path`` as the multipart field ``file`` (what ``curl -F file=@PATH URL`` sends)."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        [
            f"--{boundary}\r\n".encode(),
            f'Content-Disposition: form-data; name="file"; filename="{path.name}"\r\n'.encode(),
            b"Content-Type: image/jpeg\r\n\r\n",
            path.read_bytes(),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class Server:
    """``catdog serve`` as a child process, logging to a file, stopped with SIGTERM."""

    def __init__(self, models: dict[str, str], port: int, log_path: Path) -> None:
        self.argv = ["serve", *(arg for n, p in models.items() for arg in ("--model", f"{n}={p}"))]
        self.argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        print(f"$ {shlex.join(['catdog', *self.argv])}  (log: {self.log_path})", flush=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "catdog", *self.argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> dict:
        """Poll ``GET /health`` until 200; raises when the server exits or the time runs out."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CatDogError(
                    f"catdog serve exited with status {self.process.returncode} before it was ready; "
                    f"its log {self.log_path} ends with:\n{self.log_tail()}"
                )
            try:
                status, body = http_get_json(f"{self.url}/health", timeout=2.0)
            except (OSError, ValueError):
                status, body = 0, {}
            if status == 200:
                return body
            time.sleep(0.5)
        raise CatDogError(
            f"catdog serve did not answer {self.url}/health with 200 within {timeout:.0f}s; "
            f"its log {self.log_path} ends with:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL of the server's process group if it has not stopped within ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()
