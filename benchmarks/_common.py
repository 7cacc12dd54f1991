"""What several benchmarks share: ``catdog serve`` started in a subprocess and waited for.

The benchmarks run as scripts (``python benchmarks/NAME.py``), so this folder is on ``sys.path`` and they
import it as ``_common``.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

#: How long ``catdog serve`` may take to answer ``/health`` (model loading, worker start-up).
START_TIMEOUT_S = 180.0


def start_serve(serve_args: Sequence[str], host: str, port: int, timeout: float = START_TIMEOUT_S) -> subprocess.Popen:
    """``catdog serve --host HOST --port PORT SERVE_ARGS``, returned once ``/health`` answers 200.

    Its output goes to a temporary file; ``SystemExit`` with the end of that output if the server exits
    first, and without it (the server terminated) if ``/health`` has not answered 200 within ``timeout``.
    """
    cmd = [sys.executable, "-m", "catdog", "serve", "--host", host, "--port", str(port), *serve_args]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server process
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"catdog serve exited:\n{log.read().decode(errors='replace')[-3000:]}")
        if _healthy(host, port):
            return process
        time.sleep(0.25)
    process.terminate()
    raise SystemExit(f"catdog serve did not become healthy in {timeout:.0f} s")


def _healthy(host: str, port: int) -> bool:
    """Whether ``GET /health`` answers 200 within 2 s (not yet listening: False)."""
    connection = http.client.HTTPConnection(host, port, timeout=2)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
