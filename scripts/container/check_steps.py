"""The container check's steps after podman and the base image: each one function over the :class:`Stack` the
check brings up (the compose project, its environment, the models and images it sends), run by ``check.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from check_http import (
    SMALL_MODELS,
    check_prediction,
    expected_probabilities,
    export_small_models,
    http,
    multipart,
    sample_images,
    wait_healthy,
)
from check_podman import (
    BASE_IMAGE,
    ROOT,
    CheckFailed,
    check_pod_constraints,
    host_ca_bundle,
    image_size_mb,
    log,
    sh,
    step,
    stop_seconds,
)

#: docs/serving.md and docs/container.md: SIGTERM stops the server and its workers "within about a second": the HTTP
#: processes get 1 s to finish open requests, then everything exits. Checked with this much slack for a busy machine.
STOP_LIMIT_S = 2.0
#: What the image may add on top of its base image (catdog[serve]'s venv and the user), in MB (10^6 bytes).
ADDED_LIMIT_MB = 180
IMAGE = "catdog:latest"


@dataclass
class Stack:
    """What the steps share: the tools, the temporary folder, the compose project and what came up."""

    args: argparse.Namespace
    podman: str
    compose_v2: str
    compose: list[str]
    work: Path
    env: dict[str, str]
    base_url: str
    facts: dict[str, Any]
    model_paths: dict[str, Path] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    container: str = ""
    started: bool = False


def export_models(stack: Stack) -> None:
    """The two small models (exported, or copied from ``--models-dir``), readable by the container's user."""
    args, work = stack.args, stack.work
    if args.models_dir is not None:
        shutil.copytree(args.models_dir, work / "models")
        model_paths = {name: work / "models" / f"{name}.onnx" for name, _ in SMALL_MODELS}
        missing = [str(path) for path in model_paths.values() if not path.is_file()]
        if missing:
            raise CheckFailed(f"--models-dir {args.models_dir} lacks {missing}")
    else:
        model_paths = export_small_models(work / "models")
    # The container's non-root user reads the bind-mounted models.
    os.chmod(work, 0o755)
    os.chmod(work / "models", 0o755)
    for path in model_paths.values():
        os.chmod(path, 0o644)
    stack.model_paths = model_paths
    stack.images = sample_images()


def build_image(stack: Stack, timings: dict[str, float]) -> None:
    """``podman-compose build`` (a timed step), the image it replaced removed, the size it adds checked."""
    podman, compose, image = stack.podman, stack.compose, IMAGE
    build_args = "--pull=never --format docker"
    ca = host_ca_bundle()
    if ca is not None:
        build_args += f" --secret id=ca-bundle,src={ca}"
    previous = sh([podman, "image", "inspect", "--format", "{{.Id}}", image], check=False, quiet=True)
    with step("build (podman-compose build)", timings):
        sh(
            [compose[0], "--podman-build-args", build_args, *compose[1:], "build"],
            env=stack.env,
            cwd=ROOT,
            timeout=900,
        )
    current = sh([podman, "image", "inspect", "--format", "{{.Id}}", image]).stdout.strip()
    if previous.returncode == 0 and previous.stdout.strip() not in {"", current}:
        # The image this build replaced (and its untagged parents): keeps podman's storage bounded.
        sh([podman, "rmi", previous.stdout.strip()], check=False, quiet=True)
    check_added_size(podman, image, stack.facts)


def check_added_size(podman: str, image: str, facts: dict[str, Any]) -> None:
    """The image's size minus its base image's, recorded in ``facts`` and within :data:`ADDED_LIMIT_MB`."""
    size_mb, base_mb = (image_size_mb(podman, name) for name in (image, BASE_IMAGE))
    facts.update(image_mb=round(size_mb, 1), base_mb=round(base_mb, 1), added_mb=round(size_mb - base_mb, 1))
    log(
        f"image {image}: {size_mb:.1f} MB = base image {BASE_IMAGE} ({facts['base_image']}) {base_mb:.1f} MB "
        f"+ {size_mb - base_mb:.1f} MB added by catdog (limit {ADDED_LIMIT_MB} MB)"
    )
    if size_mb - base_mb > ADDED_LIMIT_MB:
        raise CheckFailed(
            f"the image adds {size_mb - base_mb:.1f} MB to its base image, above the {ADDED_LIMIT_MB} MB limit: "
            "see which package grew with `podman run --rm --entrypoint du catdog:latest -sh "
            "/opt/venv/lib/python3.11/site-packages/*`"
        )


def check_image_contents(podman: str, image: str = IMAGE) -> None:
    """Not root, no torch or pandas, no compiler; a HEALTHCHECK."""
    probe = (
        "import importlib.util as u, os, shutil, sys; "
        "heavy = [m for m in ('torch', 'pandas') if u.find_spec(m)]; "
        "cc = [c for c in ('gcc', 'cc', 'g++', 'clang') if shutil.which(c)]; "
        "print(os.getuid(), ','.join(heavy) or '-', ','.join(cc) or '-'); sys.exit(0)"
    )
    uid, heavy, compilers = sh([podman, "run", "--rm", "--entrypoint", "python", image, "-c", probe]).stdout.split()
    if uid == "0" or heavy != "-" or compilers != "-":
        raise CheckFailed(f"image runs as uid {uid}, holds {heavy!r} (torch/pandas), compilers {compilers!r}")
    inspect = json.loads(sh([podman, "image", "inspect", image]).stdout)[0]
    healthcheck = inspect.get("Healthcheck") or inspect["Config"].get("Healthcheck") or {}
    if not healthcheck.get("Test"):
        raise CheckFailed("the image has no HEALTHCHECK (was it built with --format docker?)")


def compose_up(stack: Stack) -> None:
    """``up -d``, then ``/health`` answers 200 with both models while the container runs unrestarted."""
    podman, compose = stack.podman, stack.compose
    stack.started = True
    sh([*compose, "up", "-d"], env=stack.env, cwd=ROOT, timeout=300)
    container = sh([*compose, "ps", "--format", "{{.Names}}"], env=stack.env, cwd=ROOT).stdout.split()[0]
    stack.container = container

    def alive() -> str | None:
        state = sh(
            [podman, "inspect", "--format", "{{.State.Status}} {{.RestartCount}}", container], check=False
        ).stdout.split()
        if len(state) == 2 and state[0] == "running" and state[1] == "0":
            return None
        return f"container {container} state/restarts: {state}"

    health = wait_healthy(stack.base_url, timeout=stack.args.health_timeout, alive=alive)
    if sorted(health.get("models", {})) != ["pretrained", "scratch"]:
        raise CheckFailed(f"/health does not list both models: {health}")


def check_predictions(stack: Stack) -> None:
    """Both models, a JPEG upload and a raw PNG body: the answers of onnxruntime on the host."""
    base_url, images, model_paths = stack.base_url, stack.images, stack.model_paths
    body, headers = multipart("file", "cat.jpg", images["cat.jpg"], "image/jpeg")
    for name in ("pretrained", "scratch"):
        status, payload = http("POST", f"{base_url}/predict/{name}", body, headers)
        if status != 200:
            raise CheckFailed(f"/predict/{name} (JPEG upload) answered {status}: {payload}")
        expected = expected_probabilities(model_paths[name], images["cat.jpg"])
        log(f"  {name} JPEG upload: {check_prediction(payload, name, expected)}")
        status, payload = http("POST", f"{base_url}/predict/{name}", images["dog.png"], {"Content-Type": "image/png"})
        if status != 200:
            raise CheckFailed(f"/predict/{name} (raw PNG body) answered {status}: {payload}")
        expected = expected_probabilities(model_paths[name], images["dog.png"])
        log(f"  {name} raw PNG body: {check_prediction(payload, name, expected)}")


def check_bad_uploads(stack: Stack) -> None:
    """Three bad uploads get a 4xx JSON error; the server stays healthy and answers a good one."""
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


def check_healthcheck_and_user(podman: str, container: str) -> None:
    """``podman healthcheck run`` passes, no process runs as root, the pod's constraints hold."""
    hc = sh([podman, "healthcheck", "run", container], check=False)
    if hc.returncode != 0:
        raise CheckFailed(f"`podman healthcheck run {container}` failed: {(hc.stdout + hc.stderr).strip()}")
    top = sh([podman, "top", container, "user", "pid", "args"]).stdout.strip().splitlines()[1:]
    users = {line.split()[0] for line in top}
    log(f"  processes: {len(top)}, users: {sorted(users)}")
    if not top or "root" in users or "0" in users:
        raise CheckFailed("a process in the container runs as root:\n" + "\n".join(top))
    check_pod_constraints(podman, container)


def check_sigterm(podman: str, container: str, facts: dict[str, Any]) -> None:
    """SIGTERM: the server exits 0 within :data:`STOP_LIMIT_S` (podman's kill and died events)."""
    # The container's init forwards the signal to catdog serve, which must stop its workers and exit 0.
    wall = time.time()
    sh([podman, "kill", "--signal", "TERM", container])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (stop_s := stop_seconds(podman, container, since=wall)) is None:
        time.sleep(0.2)
    exit_code = sh([podman, "inspect", "--format", "{{.State.ExitCode}}", container]).stdout.strip()
    facts["stop_s"] = None if stop_s is None else round(stop_s, 2)
    log(f"  SIGTERM to exit: {facts['stop_s']} s (podman's kill and died events), exit code {exit_code}")
    if stop_s is None or stop_s > STOP_LIMIT_S:
        raise CheckFailed(f"the container took {stop_s} s to stop on SIGTERM (limit {STOP_LIMIT_S} s)")
    if exit_code != "0":
        raise CheckFailed(f"catdog serve exited {exit_code} on SIGTERM, not 0")


def compose_down(stack: Stack) -> None:
    """``podman-compose down``, timed into the facts."""
    start = time.monotonic()
    sh([*stack.compose, "down"], env=stack.env, cwd=ROOT, timeout=120)
    stack.facts["down_s"] = round(time.monotonic() - start, 2)
    stack.started = False


def show_container_logs(stack: Stack) -> None:
    """The container's last 60 log lines (after a failure)."""
    logs = sh([stack.podman, "logs", "--tail", "60", f"{stack.args.project}_catdog_1"], check=False, quiet=True)
    log("container logs (last 60 lines):\n" + (logs.stdout + logs.stderr).strip())
