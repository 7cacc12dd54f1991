"""What the container check sends and expects: two small exported models, sample uploads, HTTP requests, and the
answers, page and ``/metrics`` counts the server must give (also used by ``tests/test_container.py``)."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _podman import CheckFailed, log

#: Two tiny timm architectures (one endpoint each), exported at a small input size.
SMALL_MODELS = (("pretrained", "test_efficientnet"), ("scratch", "test_resnet"))
IMAGE_SIZE = 48


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
