"""``catdog serve``'s command line: every option in one table, each with its environment variable.

:data:`OPTIONS` is the one home of each option's flag, environment variable, default and meaning: the
argparse parser, ``catdog serve --help`` and the table in ``docs/serving.md`` (see :func:`env_table`)
are all made from it.
"""

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catdog import CatDogError
from catdog.serving.models import check_model_name

logger = logging.getLogger("catdog.serve")


@dataclass(frozen=True)
class Option:
    """One ``catdog serve`` option and the environment variable it falls back to."""

    flag: str
    env: str
    default: str
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


#: Every option of ``catdog serve``, in ``--help`` order. ``--model`` is repeatable; its variable holds a list.
OPTIONS: tuple[Option, ...] = (
    Option(
        "--model",
        "CATDOG_MODELS",
        "",
        "a model to serve at POST /predict/NAME, as NAME=PATH; repeat for several (the variable: NAME=PATH,NAME=PATH)",
    ),
    Option(
        "--host",
        "CATDOG_HOST",
        "127.0.0.1",
        "bind address: 127.0.0.1 (this machine only), 0.0.0.0 or :: (every interface: containers, other hosts)",
    ),
    Option("--port", "CATDOG_PORT", "8000", "TCP port", int),
    Option(
        "--max-batch-size", "CATDOG_MAX_BATCH_SIZE", "8", "most requests per dynamic batch; 1 turns batching off", int
    ),
    Option("--batch-timeout", "CATDOG_BATCH_TIMEOUT", "0.01", "seconds to wait for a batch to fill", float),
    Option("--workers", "CATDOG_WORKERS", "1", "inference worker processes per model", int),
    Option("--api-servers", "CATDOG_API_SERVERS", "0", "HTTP server processes; 0 = one per inference worker", int),
    Option("--threads", "CATDOG_THREADS", "0", "onnxruntime threads per worker; 0 = onnxruntime's choice", int),
    Option("--max-upload-mb", "CATDOG_MAX_UPLOAD_MB", "10", "largest request body in MB (413 above)", float),
    Option(
        "--max-image-pixels",
        "CATDOG_MAX_IMAGE_PIXELS",
        "40000000",
        "largest decoded image in pixels, guards against decompression bombs (413 above)",
        int,
    ),
    Option(
        "--timeout",
        "CATDOG_TIMEOUT",
        "30",
        "seconds from a request's arrival to its answer: 504 after, or 503 if its model's worker died meanwhile",
        float,
    ),
    Option(
        "--max-restarts",
        "CATDOG_MAX_RESTARTS",
        "5",
        "restarts of one model's dead workers (or of HTTP server processes) allowed in 10 minutes; one more "
        "stops the server with exit status 1",
        int,
    ),
    Option(
        "--max-queue",
        "CATDOG_MAX_QUEUE",
        "0",
        "requests of one model in the server at once (waiting or in inference); one more gets 503 with "
        "Retry-After at once; 0 = no bound",
        int,
    ),
    Option(
        "--api-key",
        "CATDOG_API_KEY",
        "",
        "require this key on POST /predict/NAME (Authorization: Bearer KEY or X-API-Key: KEY; 401 without); "
        "several: KEY1,KEY2. Prefer the variable or --api-key-file: a command line is visible to other users",
    ),
    Option(
        "--api-key-file",
        "CATDOG_API_KEY_FILE",
        "",
        "a file of accepted API keys, one a line (e.g. a mounted Kubernetes Secret); adds to --api-key",
    ),
    Option("--log-level", "CATDOG_LOG_LEVEL", "info", "log level", str, ("debug", "info", "warning", "error")),
)


def env_table() -> str:
    """The Markdown table of :data:`OPTIONS` that ``docs/serving.md`` holds (regenerate it from here)."""
    rows = ["| option | environment variable | default | meaning |", "|---|---|---|---|"]
    for opt in OPTIONS:
        default = f"`{opt.default}`" if opt.default else "(none)"
        rows.append(f"| `{opt.flag}` | `{opt.env}` | {default} | {opt.help} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The ``catdog serve`` parser; each default comes from the option's environment variable when set."""
    parser = argparse.ArgumentParser(
        prog="catdog serve",
        description="Serve exported ONNX models over HTTP (LitServe, onnxruntime; no torch). "
        "Each option falls back to the environment variable shown.",
    )
    for opt in OPTIONS:
        help_ = f"{opt.help}; env {opt.env}" + (f" ({opt.default})" if opt.default else "")
        help_ = help_.replace("%", "%%")
        if opt.flag == "--model":
            parser.add_argument(opt.flag, action="append", default=[], metavar="NAME=PATH", help=help_)
            continue
        default = os.environ.get(opt.env, "").strip() or opt.default
        parser.add_argument(opt.flag, type=opt.type, default=default, choices=opt.choices, help=help_)
    return parser


def parse_model_specs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``NAME=PATH`` (or ``PATH``, named after the file) -> ``[(name, path)]``; names must be unique."""
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        name, sep, path = spec.partition("=")
        if not sep or Path(spec).exists():
            name, path = Path(spec).stem, spec
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise CatDogError(f"--model {spec!r}: expected NAME=PATH, e.g. pretrained=models/pretrained.onnx")
        check_model_name(name, spec)
        if name in {n for n, _ in pairs}:
            raise CatDogError(f"--model {spec!r}: the name {name!r} is given twice")
        pairs.append((name, path))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    """``catdog serve``: load and check every model, then serve until SIGTERM/SIGINT."""
    from catdog.serving.access import load_api_keys
    from catdog.serving.api import configure_logging
    from catdog.serving.app import ServerFailure, ServeSettings, build_server, run
    from catdog.serving.models import load_model_info

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    specs = args.model or os.environ.get("CATDOG_MODELS", "").split(",")
    pairs = parse_model_specs(specs)
    if not pairs:
        raise CatDogError(
            "no model to serve: pass --model NAME=PATH (e.g. --model pretrained=models/pretrained.onnx) "
            "or set CATDOG_MODELS=pretrained=models/pretrained.onnx,scratch=models/scratch.onnx"
        )
    configure_logging(args.log_level)
    models = [load_model_info(name, path) for name, path in pairs]
    for m in models:
        logger.info("serving %s at %s (%d px)", m.path, m.api_path, m.config.image_size)
    settings = ServeSettings(
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        workers=args.workers,
        threads=args.threads,
        max_upload_mb=args.max_upload_mb,
        max_image_pixels=args.max_image_pixels,
        timeout=args.timeout,
        log_level=args.log_level,
        max_restarts=args.max_restarts,
        max_queue=args.max_queue,
        api_keys=load_api_keys(args.api_key, args.api_key_file),
    )
    if settings.api_keys.required:
        logger.info("POST /predict/* requires an API key (%r)", settings.api_keys)
    elif args.host != "127.0.0.1":
        logger.warning("no API key set (--api-key): anyone who reaches %s:%d can use the models", args.host, args.port)
    server = build_server(models, settings)
    try:
        return run(server, args.host, args.port, api_servers=args.api_servers or None, log_level=args.log_level)
    except ServerFailure as err:  # a runtime failure, not a usage error: exit status 1
        print(f"catdog serve: error: {err}", file=sys.stderr)
        return 1
