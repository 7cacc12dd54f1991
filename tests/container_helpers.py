"""Helpers for the container tests: ``scripts/container/check.py`` loaded as a module, a server stopped with
SIGTERM."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("catdog_container_check", ROOT / "scripts/container/check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_check()


def terminate(proc: subprocess.Popen) -> tuple[str, bool]:
    """SIGTERM, then read the output to the end; SIGKILL after 15 s: (output, whether SIGTERM stopped it)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=15)[0], True
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0], False
