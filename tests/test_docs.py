"""The shell examples of README.md and docs/*.md name commands and options that exist, and the cheap ones run.

Every ```bash block (and every inline `catdog <command> ...` span) is read: each ``catdog <command>`` must be
a command of ``catdog --help``, and each ``--flag`` it passes must appear in that command's ``--help`` (one
help text per command, cached; LightningCLI's ``catdog fit --help`` lists the ``--trainer.*``/``--model.*``
options). ``python -m keras_baselines <command>`` likewise where Keras is installed. ``catdog --help``,
``catdog --version`` and ``catdog configs`` examples run for real.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from catdog.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "keras_baselines" / "README.md"]
SEPARATORS = {"&&", "||", ";", "|", "&"}
PREFIXES = {"sudo", "exec", "time", "env"}


@dataclass(frozen=True)
class Example:
    """One command of a shell example: which program (``catdog`` or ``keras_baselines``) and its arguments."""

    program: str
    args: tuple[str, ...]
    where: str  # file:line

    @property
    def command(self) -> str:
        return self.args[0] if self.args else ""

    @property
    def flags(self) -> list[str]:
        found = []
        for arg in self.args[1:]:
            arg = arg.strip("[]")
            if arg.startswith("--") and len(arg) > 2:
                found.append(arg.split("=", 1)[0])
        return found


def _bash_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command line) of every ```bash block, continuation lines joined."""
    lines, inside, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            inside = line.strip() in {"```bash", "```sh", "```shell", "```console"} if not inside else False
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    return lines


def _inline_commands(text: str) -> list[tuple[int, str]]:
    """Inline code spans that are a whole ``catdog <command> ...`` line."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for span in re.findall(r"`([^`]+)`", line):
            if re.fullmatch(r"catdog (--help|--version|[a-z][a-z-]*( .*)?)", span) and "..." not in span.split()[1]:
                found.append((number, span))
    return found


def _split(line: str) -> list[list[str]]:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in prose-like examples: fall back to words
        tokens = line.split("#", 1)[0].split()
    segments, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    return [*segments, current]


def _example(tokens: list[str], where: str) -> Example | None:
    while tokens and (tokens[0] in PREFIXES or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0])):
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] == "catdog" or tokens[0].endswith("/catdog"):
        return Example("catdog", tuple(tokens[1:]), where)
    if re.fullmatch(r"(\S*/)?python3?", tokens[0]) and tokens[1:3] in (["-m", "catdog"], ["-m", "keras_baselines"]):
        return Example(tokens[2], tuple(tokens[3:]), where)
    return None


def examples() -> list[Example]:
    found = []
    for path in DOCS:
        text = path.read_text()
        name = path.relative_to(ROOT).as_posix()
        for number, line in [*_bash_lines(text), *_inline_commands(text)]:
            for tokens in _split(line):
                example = _example(tokens, f"{name}:{number}")
                if example is not None:
                    found.append(example)
    return found


EXAMPLES = examples()
KERAS = importlib.util.find_spec("keras") is not None


@functools.cache
def help_text(program: str, command: str) -> str:
    """``<program> <command> --help``, run once per command."""
    module = "catdog" if program == "catdog" else "keras_baselines"
    env = {**os.environ, "WANDB_MODE": "offline", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", module, command, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, f"{module} {command} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


def test_the_examples_are_found() -> None:
    """The reader sees the README's commands, LightningCLI's dotted options and continuation lines."""
    where = {(e.program, e.command) for e in EXAMPLES}
    assert {("catdog", "demo"), ("catdog", "fuse"), ("catdog", "serve"), ("catdog", "export")} <= where
    assert any("--model.pretrained_file" in e.flags for e in EXAMPLES)
    joined = _bash_lines("```bash\ncatdog serve --model a=a.onnx \\\n    --port 8000  # comment\n```\n")
    assert [Example("catdog", ("serve", "--model", "a=a.onnx", "--port", "8000"), "x")] == [
        _example(tokens, "x") for _, line in joined for tokens in _split(line)
    ]
    assert _example(["kubectl", "-n", "catdog", "get", "pods"], "x") is None


def test_every_catdog_command_named_exists() -> None:
    unknown = [
        f"{e.where}: catdog {e.command}"
        for e in EXAMPLES
        if e.program == "catdog" and e.command not in COMMANDS and not e.command.startswith("-")
    ]
    assert not unknown, f"commands that `catdog --help` does not list: {unknown}"


@pytest.mark.parametrize("command", sorted({e.command for e in EXAMPLES if e.program == "catdog" and e.flags}))
def test_every_flag_of_a_catdog_example_is_in_its_help(command: str) -> None:
    if command not in COMMANDS:
        pytest.skip(f"{command!r} is not a command (test_every_catdog_command_named_exists names it)")
    missing = _flags_missing_from_help("catdog", command)
    assert not missing, f"options that `catdog {command} --help` does not list: {missing}"


@pytest.mark.keras
@pytest.mark.skipif(not KERAS, reason="needs the keras extra")
@pytest.mark.parametrize("command", sorted({e.command for e in EXAMPLES if e.program == "keras_baselines"}))
def test_every_flag_of_a_keras_baselines_example_is_in_its_help(command: str) -> None:
    missing = _flags_missing_from_help("keras_baselines", command)
    assert not missing, f"options that `python -m keras_baselines {command} --help` does not list: {missing}"


def _flags_missing_from_help(program: str, command: str) -> list[str]:
    """``where: flag`` of every example flag of ``program command`` that its ``--help`` does not list."""
    text = help_text(program, command)
    return sorted(
        {
            f"{e.where}: {flag}"
            for e in EXAMPLES
            if e.program == program and e.command == command
            for flag in e.flags
            if not re.search(rf"(?<![\w.-]){re.escape(flag)}(?![\w-])", text)
        }
    )


def _cheap(example: Example) -> bool:
    return example.program == "catdog" and (
        example.args in {("--help",), ("--version",)} or example.command == "configs"
    )


@pytest.mark.parametrize("example", [e for e in EXAMPLES if _cheap(e)], ids=lambda e: f"{e.where} {' '.join(e.args)}")
def test_the_cheap_examples_run(example: Example, tmp_path: Path) -> None:
    """``catdog --help``, ``--version`` and ``catdog configs [--out DIR]`` as written, in a scratch folder."""
    result = subprocess.run(
        [sys.executable, "-m", "catdog", *example.args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, f"{example.where}: catdog {' '.join(example.args)}\n{result.stderr}"
    if example.command == "configs" and "--out" not in example.args:
        listed = {line.strip() for line in result.stdout.splitlines()[1:]}
        assert {"scratch", "pretrained", "poutyne", "compare"} <= listed, result.stdout
    if "--out" in example.args:
        out = tmp_path / example.args[example.args.index("--out") + 1]
        assert (out / "scratch.yaml").is_file() and (out / "pretrained.yaml").is_file()


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """README's second command installs and runs the tests as `.ci/run` does."""
    readme = (ROOT / "README.md").read_text()
    install = re.search(
        r"pip install (torch==\S+ torchvision==\S+ -e '\.\[all,keras,dev\]') && (\S+ -m pytest)", readme
    )
    assert install, "README.md: the second command installs '.[all,keras,dev]' and runs `python -m pytest`"
    ci = (ROOT / ".ci" / "run").read_text()
    assert install.group(1) in ci and f"{install.group(2)}\n" in ci
