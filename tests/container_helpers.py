"""Helpers for the container tests: ``scripts/container/check.py`` loaded as a module (its models, uploads and
HTTP checks), and the processes of a server started from a test."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("catdog_container_check", ROOT / "scripts/container/check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does (its dataclass looks itself up there)
    spec.loader.exec_module(module)
    return module


#: scripts/container/check.py, loaded once for every test module.
check = load_check()


def terminate(proc: subprocess.Popen) -> tuple[str, bool]:
    """SIGTERM, then read the output to the end; SIGKILL after 15 s: (output, whether SIGTERM stopped it)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=15)[0], True
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0], False


def process_cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def descendants(pid: int) -> dict[int, bytes]:
    """The processes below ``pid`` (Linux /proc), with their command lines; empty elsewhere."""
    found: dict[int, bytes] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                cmdline = process_cmdline(child)
                if cmdline is not None and child not in found:
                    found[child] = cmdline
                    todo.append(child)
    return found
