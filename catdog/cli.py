"""The ``catdog`` command: one entry point that dispatches to a module per subcommand.

Each subcommand is one line in :data:`COMMANDS`: ``name -> ("module:function", "help")``. The
function takes the remaining arguments (``list[str]``) and returns an exit status. Modules are
imported only when their command runs, so ``catdog --help``, ``fuse`` and ``serve`` start fast
and never import torch unless they need it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Callable, Sequence

from catdog import CatDogError, __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "sample-data": ("catdog.data.sample_cli:main", "Generate learnable sample data in both Kaggle layouts."),
    "fuse": ("catdog.data.fusion:main", "Fuse Kaggle cats and breed-split dogs into dataset/{train,test}/{cat,dog}."),
    "fit": ("catdog.training.cli:main", "Train a model (LightningCLI): catdog fit -c scratch"),
    "validate": ("catdog.training.cli:main", "Validate a checkpoint (LightningCLI)."),
    "test": ("catdog.training.cli:main", "Test a checkpoint and write metrics.json (LightningCLI)."),
    "predict": ("catdog.training.cli:main", "Predict with a checkpoint (LightningCLI)."),
    "poutyne": ("catdog.poutyne.trainer:main", "Train and test with the Poutyne parity trainer."),
    "calibrate": (
        "catdog.calibration:main",
        "Fit a calibration map (temperature or Platt) on a run's validation predictions.",
    ),
    "export": ("catdog.export.onnx:main", "Export checkpoints to self-describing ONNX files."),
    "serve": ("catdog.serving.cli:main", "Serve ONNX models over HTTP with LitServe."),
    "report": ("catdog.evaluation.report.command:main", "Collect metrics.json files into a results table and plots."),
    "compare": (
        "catdog.evaluation.compare.run:main",
        "Run every model of the comparison on one dataset, then the report.",
    ),
    "demo": ("catdog.demo:main", "Run the whole pipeline on generated data."),
    "configs": ("catdog.config_files:main", "List the packaged YAML configs (-c NAME), or copy them out: --out DIR."),
}

#: Subcommands that receive their own name as the first argument (LightningCLI needs it).
_PASS_NAME = {"fit", "validate", "test", "predict"}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: catdog <command> [options]",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()),
        "",
        "Run 'catdog <command> --help' for a command's options.",
    ]
    return "\n".join(lines)


def _resolve(target: str) -> Callable[[list[str]], int | None]:
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


#: Import names whose distribution (as pyproject.toml spells it) differs.
_DISTRIBUTIONS = {"PIL": "pillow", "multipart": "python-multipart", "yaml": "pyyaml", "sklearn": "scikit-learn"}


def _missing_package_message(module: str) -> str:
    """Name the catdog extras that install ``module``, read from the installed package's requirements."""
    top = module.split(".")[0]
    wanted = _DISTRIBUTIONS.get(top, top).lower().replace("_", "-")
    try:
        requirements = importlib.metadata.requires("catdog") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    extras = []
    for requirement in requirements:
        dist = re.match(r"[A-Za-z0-9._-]+", requirement)
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
        if dist and extra and dist.group(0).lower().replace("_", "-") == wanted and extra.group(1) not in extras:
            extras.append(extra.group(1))
    if not extras:
        return f"this command needs the package {top!r}, which is not installed: pip install {wanted}"
    hint = " or ".join(f"pip install 'catdog[{extra}]'" for extra in extras)
    return f"this command needs the package {top!r}, which is not installed. Install the extra it belongs to: {hint}."


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``catdog``; returns the exit status (also used as the console script)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"catdog {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"catdog: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if name in _PASS_NAME:
        rest = [name, *rest]
    try:
        status = _resolve(COMMANDS[name][0])(rest)
    except ModuleNotFoundError as err:
        # A command imports its packages when it is resolved or later, when it runs: both name the extra.
        if not err.name or err.name.split(".")[0] == "catdog":
            raise
        print(f"catdog {name}: error: {_missing_package_message(err.name)}", file=sys.stderr)
        return 2
    except CatDogError as err:
        print(f"catdog {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"catdog {name}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
