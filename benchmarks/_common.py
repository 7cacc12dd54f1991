"""What several benchmarks share: the ``--quick`` option, and ``catdog serve`` started in a subprocess and waited for.

The benchmarks run as scripts (``python benchmarks/NAME.py``), so this folder is on ``sys.path`` and they
import it as ``_common``.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: Mapping[str, object]
) -> argparse.Namespace:
    """``parser``'s arguments with a ``--quick`` option: the smallest settings (``quick``, by destination).

    ``--quick`` runs the benchmark end to end in seconds, to check that it still works: its figures measure
    nothing. Options given on the command line still win over the quick settings.
    """
    settings = ", ".join(f"{name.replace('_', '-')} {value}" for name, value in quick.items())
    parser.add_argument("--quick", action="store_true", help=f"smallest settings, a check that it runs ({settings})")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


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
