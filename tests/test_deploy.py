"""deploy/kubernetes, checked offline: schemas of a stated Kubernetes version (strict), the hardening policy
(checkov), and every ``catdog serve`` option and probe path the manifests name exists."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from catdog.serving.cli import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
#: The Kubernetes version the manifests are written for (docs/kubernetes.md says the same).
KUBERNETES_VERSION = "1.31.0"
#: Environment variables the manifests may set that are not ``catdog serve`` options.
OTHER_ENV = {"TMPDIR"}
#: checkov checks the manifests do not meet, each with the reason.
SKIPPED_CHECKS = {
    # The manifest pins a tag (catdog:0.1.0); the digest exists only once the image is built and pushed, and
    # docs/kubernetes.md sets it at deploy time with `kustomize edit set image catdog=...@sha256:...`.
    "CKV_K8S_43": "image by digest",
}
#: The hardening rules of the pod and the checkov check of each (all must pass for the Deployment).
HARDENING = {
    "CKV_K8S_8": "liveness probe",
    "CKV_K8S_9": "readiness probe",
    "CKV_K8S_10": "CPU request",
    "CKV_K8S_11": "CPU limit",
    "CKV_K8S_12": "memory request",
    "CKV_K8S_13": "memory limit",
    "CKV_K8S_14": "image tag fixed",
    "CKV_K8S_20": "no privilege escalation",
    "CKV_K8S_22": "read-only root filesystem",
    "CKV_K8S_23": "no host IPC",
    "CKV_K8S_28": "NET_RAW dropped",
    "CKV_K8S_29": "pod security context",
    "CKV_K8S_30": "container security context",
    "CKV_K8S_31": "seccomp RuntimeDefault",
    "CKV_K8S_37": "capabilities dropped",
    "CKV_K8S_38": "no service account token",
    "CKV_K8S_40": "high UID",
}


def manifests() -> dict[str, list[dict]]:
    """Every file of deploy/kubernetes (the optional folder included) -> its YAML documents."""
    return {
        str(path.relative_to(DEPLOY)): [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(DEPLOY.rglob("*.yaml"))
    }


def resource(kind: str) -> dict:
    found = [doc for docs in manifests().values() for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {DEPLOY}, found {len(found)}"
    return found[0]


def serve_container() -> dict:
    return resource("Deployment")["spec"]["template"]["spec"]["containers"][0]


# --------------------------------------------------------------------------------------------------
# schemas
# --------------------------------------------------------------------------------------------------
def test_every_manifest_is_valid_for_the_stated_kubernetes_version() -> None:
    import kubernetes_validate

    checked = 0
    for docs in manifests().values():
        for doc in docs:
            if doc["kind"] in {"Kustomization", "ServiceMonitor"}:  # not Kubernetes API objects (a CRD's kind)
                continue
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            checked += 1
    assert checked >= 9
    broken = copy.deepcopy(resource("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}  # a typo: strict refuses it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_the_service_monitor_matches_the_service() -> None:
    kustomization = resource("Kustomization")
    files = {name for name in manifests() if "/" not in name and name != "kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert all(doc["metadata"]["namespace"] == kustomization["namespace"] for doc in _namespaced())
    monitor, service = resource("ServiceMonitor"), resource("Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def _namespaced() -> list[dict]:
    top = [doc for name, docs in manifests().items() if "/" not in name for doc in docs]
    return [doc for doc in top if doc["kind"] not in {"Kustomization", "Namespace"}]


# --------------------------------------------------------------------------------------------------
# policy
# --------------------------------------------------------------------------------------------------
#: checkov pins packaging<24 and networkx<2.7, which the project's own packages outgrew (pytest needs
#: packaging>=24), so it lives in a venv of its own under .tools/ (made once, from PyPI), never in the project's.
CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = ROOT / ".tools" / f"checkov-{CHECKOV_VERSION}"


@pytest.fixture(scope="session")
def checkov_command(skip_or_fail) -> list[str]:
    """The checkov command: ``CATDOG_CHECKOV`` if set, else checkov in its own venv under .tools/ (installed once)."""
    if os.environ.get("CATDOG_CHECKOV"):
        return [os.environ["CATDOG_CHECKOV"]]
    binary = CHECKOV_VENV / "bin" / "checkov"
    if not binary.exists():
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(CHECKOV_VENV)], capture_output=True)
        pip = [str(CHECKOV_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        done = made.returncode == 0 and subprocess.run([*pip, f"checkov=={CHECKOV_VERSION}"], capture_output=True,
                                                       text=True, timeout=1200)  # fmt: skip
        if not done or done.returncode != 0 or not binary.exists():
            detail = done.stderr[-1500:] if done else made.stderr.decode()[-1500:]
            skip_or_fail(f"checkov {CHECKOV_VERSION} could not be installed in {CHECKOV_VENV}: {detail}", "checkov")
    return [str(binary)]


def checkov(command: list[str], folder: Path) -> dict:
    """checkov's Kubernetes checks on ``folder``, offline (no download, no platform), as its JSON report."""
    command = [*command, "-d", str(folder), "--framework", "kubernetes", "-o", "json"]
    command += ["--skip-download", "--skip-check", ",".join(SKIPPED_CHECKS)]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.stdout.strip(), f"checkov said nothing:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.slow
def test_policy_check_passes_every_hardening_rule_and_catches_a_weakened_pod(
    tmp_path: Path, checkov_command: list[str]
) -> None:
    for path in DEPLOY.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    weak = copy.deepcopy(resource("Deployment"))
    weak["metadata"]["name"] = "weak"
    container = weak["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container["securityContext"]["capabilities"] = {"add": ["NET_RAW"]}
    weak["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    (tmp_path / "weak.yaml").write_text(yaml.safe_dump(weak))

    report = checkov(checkov_command, tmp_path)
    results = report["results"]
    failed: dict[str, set[str]] = {}
    for check in results["failed_checks"]:
        failed.setdefault(check["resource"], set()).add(check["check_id"])
    passed = {c["check_id"] for c in results["passed_checks"] if c["resource"] == "Deployment.catdog.catdog"}
    assert report["summary"]["parsing_errors"] == 0
    assert set(failed) == {"Deployment.catdog.weak"}, failed  # every project resource passes every check
    assert set(HARDENING) <= passed, {k: HARDENING[k] for k in set(HARDENING) - passed}
    assert {"CKV_K8S_22", "CKV_K8S_28", "CKV_K8S_38"} <= failed["Deployment.catdog.weak"]


# --------------------------------------------------------------------------------------------------
# what the manifests ask of catdog serve and of the image
# --------------------------------------------------------------------------------------------------
def test_every_serve_option_and_variable_the_manifests_use_exists_and_parses() -> None:
    by_env = {opt.env: opt for opt in OPTIONS}
    by_flag = {opt.flag: opt for opt in OPTIONS}
    config = resource("ConfigMap")["data"]
    container = serve_container()
    assert container["command"][:2] == ["catdog", "serve"]
    for arg in container["command"][2:] + container.get("args", []):
        if arg.startswith("--"):
            assert arg.split("=")[0] in by_flag, f"catdog serve has no option {arg}"
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    assert set(env) <= set(by_env) | OTHER_ENV
    assert config and set(config) <= set(by_env), set(config) - set(by_env)
    for name, value in config.items():
        option = by_env[name]
        option.type(value)  # an int option gets an int, a float option a float
        assert option.choices is None or value in option.choices, (name, value)
    assert config["CATDOG_HOST"] == "0.0.0.0"
    assert int(config["CATDOG_MAX_QUEUE"]) > 0
    assert container["envFrom"][0]["configMapRef"]["name"] == resource("ConfigMap")["metadata"]["name"]


def test_probes_ports_and_paths_match_what_the_server_serves() -> None:
    container, config = serve_container(), resource("ConfigMap")["data"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == int(config["CATDOG_PORT"])
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert (
        annotations["prometheus.io/port"] == config["CATDOG_PORT"] and annotations["prometheus.io/path"] == "/metrics"
    )
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for spec in config["CATDOG_MODELS"].split(","):
        assert spec.split("=", 1)[1].startswith("/models/")
    assert mounts["/models"]["readOnly"] is True
    assert str(Path(config["CATDOG_API_KEY_FILE"]).parent) in mounts
    volumes = {v["name"]: v for v in resource("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert "secret" in volumes[mounts[str(Path(config["CATDOG_API_KEY_FILE"]).parent)]["name"]]


def test_the_pod_can_write_only_where_the_server_writes_and_drains_before_it_stops() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]
    container = serve_container()
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The metrics folder and the multiprocessing sockets go under TMPDIR: an emptyDir there.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volumes[mounts[env["TMPDIR"]]]
    writable = [path for path, name in mounts.items() if "emptyDir" in volumes[name]]
    assert writable == [env["TMPDIR"]]
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))
    assert pod["securityContext"]["runAsUser"] == container["securityContext"]["runAsUser"] == uid
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert 0 < sleep < pod["terminationGracePeriodSeconds"] - 5  # catdog serve stops within about a second
    config = resource("ConfigMap")["data"]
    assert float(config["CATDOG_TIMEOUT"]) < pod["terminationGracePeriodSeconds"]


def test_the_image_compose_and_manifests_listen_on_every_interface() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert compose["services"]["catdog"]["environment"]["CATDOG_HOST"] == "0.0.0.0"
    assert resource("ConfigMap")["data"]["CATDOG_HOST"] == "0.0.0.0"
    assert next(opt for opt in OPTIONS if opt.flag == "--host").default == "127.0.0.1"


def test_compose_runs_the_image_under_the_pods_constraints() -> None:
    """compose.yaml (which scripts/container-check runs under podman) holds the pod's constraints."""
    service = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["catdog"]
    pod = resource("Deployment")["spec"]["template"]["spec"]
    container = serve_container()
    tmpdir = {item["name"]: item.get("value") for item in container["env"]}["TMPDIR"]
    assert service["read_only"] is True and container["securityContext"]["readOnlyRootFilesystem"] is True
    assert service["tmpfs"] == [tmpdir]
    assert service["user"] == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert service["cap_drop"] == container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
