"""The catdog command: dispatch, help, errors, and light start-up for data commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from catdog.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fuse", "sample-data", "fit", "validate", "test", "predict", "export", "serve", "poutyne",
                 "demo", "report"):  # fmt: skip
        assert f"  {name} " in out
    assert set(COMMANDS) >= {"fuse", "sample-data", "fit", "serve", "demo"}


def test_unknown_command_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 2


def test_every_command_module_exposes_main() -> None:
    import importlib

    for target, _ in COMMANDS.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


def test_console_script_and_module_entry_points() -> None:
    console_script = str(Path(sys.executable).parent / "catdog")
    for command in ([console_script, "--version"], [sys.executable, "-m", "catdog", "--version"]):
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        assert result.stdout.startswith("catdog ")


def test_data_commands_import_no_torch(tmp_path) -> None:
    code = (
        "import sys; from catdog.cli import main; "
        f"main(['sample-data', '--out', {str(tmp_path)!r}, '--cats', '4', '--breeds', '2', '--dogs-per-breed', '2']); "
        "import catdog.data.fusion; "
        "print('torch' in sys.modules, 'lightning' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False False"
