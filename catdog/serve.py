"""``catdog serve``: the names the serving code had when it was one module; it lives in :mod:`catdog.serving`."""

import sys

from catdog.export.runtime import softmax
from catdog.serving.api import OnnxClassifierAPI, configure_logging
from catdog.serving.app import build_server, run
from catdog.serving.cli import OPTIONS, build_parser, main, parse_model_specs
from catdog.serving.models import METADATA_KEYS, ServedModel, load_model_info

__all__ = [
    "METADATA_KEYS",
    "OPTIONS",
    "OnnxClassifierAPI",
    "ServedModel",
    "build_parser",
    "build_server",
    "configure_logging",
    "load_model_info",
    "main",
    "parse_model_specs",
    "run",
    "softmax",
]

if __name__ == "__main__":
    from catdog.cli import main as cli_main

    sys.exit(cli_main(["serve", *sys.argv[1:]]))
