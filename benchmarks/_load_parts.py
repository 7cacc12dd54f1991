"""The parts of ``benchmarks/load.py`` that are not the run: models, images, uploads, the server's memory."""

from __future__ import annotations

import io
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _common import start_serve

from catdog.data.sample_data import breed_style, draw_cat, draw_dog

HOST = "127.0.0.1"  # loopback only, by design
MAX_UPLOAD_MB = 1.0  # the server's --max-upload-mb here, so a "too large" upload stays small
BOUNDARY = "catdog-load-boundary-5c2a"


@dataclass(frozen=True)
class Upload:
    """One request the clients can send: what it is, where it goes and the status it must get."""

    kind: str
    model: str
    body: bytes
    content_type: str
    expected_status: int
    image: int | None = None  # index into the good images (good uploads only)


# --------------------------------------------------------------------------------------------------
# models, images, uploads
# --------------------------------------------------------------------------------------------------
def export_models(workdir: Path, image_size: int) -> dict[str, str]:
    """Two small timm networks with random weights (heads included), exported with ``catdog export``'s core."""
    import torch

    from catdog.export.onnx import export_onnx
    from catdog.training.network import build_network, preprocess_config_for

    paths = {}
    for seed, (name, arch) in enumerate((("first", "test_efficientnet"), ("second", "test_resnet"))):
        torch.manual_seed(seed)
        network = build_network(arch, exportable=True).eval()
        head = network.get_classifier()  # a fresh head is zero: random weights make answers depend on the image
        torch.nn.init.normal_(head.weight, std=0.5)
        torch.nn.init.normal_(head.bias, std=0.5)
        path = workdir / f"{name}.onnx"
        export_onnx(network, preprocess_config_for(network, image_size), path, model_name=arch)
        paths[name] = str(path)
    return paths


def good_images(count: int = 12) -> list[tuple[bytes, str]]:
    """Generated cats and dogs of several sizes and aspect ratios, as (bytes, content type), JPEG and PNG."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(count):
        size = (96, 160, 240)[i % 3]
        image = draw_cat(rng, size) if i % 2 else draw_dog(rng, size, breed_style(i % 5, 0))
        if i % 4 == 3:
            image = image.resize((size, size * 3 // 4))  # landscape
        buffer = io.BytesIO()
        fmt, content_type = ("PNG", "image/png") if i % 3 == 2 else ("JPEG", "image/jpeg")
        image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append((buffer.getvalue(), content_type))
    return out


def in_process_probabilities(model_path: str, image: tuple[bytes, str]) -> np.ndarray:
    """The answer the server must give: the file's own preprocessing, then onnxruntime, then softmax."""
    import onnxruntime as ort

    from catdog.data.transforms import PreprocessConfig, preprocess

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    config = PreprocessConfig.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    (logits,) = session.run(None, {session.get_inputs()[0].name: preprocess(io.BytesIO(image[0]), config)[None]})
    shifted = np.exp(logits[0].astype(np.float64) - logits[0].max())
    return shifted / shifted.sum()


def multipart(field_name: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def build_uploads(models: list[str], images: list[tuple[bytes, str]]) -> list[Upload]:
    """Every good upload (each image to each model, multipart and raw) and the bad kinds with their status."""
    uploads = []
    for model in models:
        for index, (data, content_type) in enumerate(images):
            body, multipart_type = multipart("file", f"image{index}", data, content_type)
            uploads.append(Upload("good multipart", model, body, multipart_type, 200, index))
            uploads.append(Upload("good raw body", model, data, content_type, 200, index))
    jpeg = images[0][0]
    first = models[0]
    text, text_type = multipart("file", "notes.txt", b"this is not an image\n" * 20, "text/plain")
    truncated, truncated_type = multipart("file", "cut.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")
    wrong_field, wrong_field_type = multipart("image", "cat.jpg", jpeg, "image/jpeg")
    too_large = b"\xff\xd8" + bytes(int(MAX_UPLOAD_MB * 1.5 * 2**20))  # above the limit in MB or MiB
    uploads += [
        Upload("bad: not an image", first, text, text_type, 400),
        Upload("bad: empty body", first, b"", "image/jpeg", 400),
        Upload("bad: truncated JPEG", models[-1], truncated, truncated_type, 400),
        Upload("bad: unknown model", "no-such-model", jpeg, "image/jpeg", 404),
        Upload("bad: too large", first, too_large, "image/jpeg", 413),
        Upload("bad: content type", models[-1], b"{}", "application/json", 415),
        Upload("bad: form field", first, wrong_field, wrong_field_type, 422),
    ]
    return uploads


# --------------------------------------------------------------------------------------------------
# the server and its memory
# --------------------------------------------------------------------------------------------------
def start_server(models: dict[str, str], port: int, extra: list[str]) -> subprocess.Popen:
    """``catdog serve`` on 127.0.0.1:``port``, once ``/health`` answers 200."""
    args = [arg for name, path in models.items() for arg in ("--model", f"{name}={path}")]
    args += ["--log-level", "warning", "--max-upload-mb", str(MAX_UPLOAD_MB), *extra]
    return start_serve(args, HOST, port)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB (10^6 bytes), from /proc."""
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue  # the process ended meanwhile (or is a zombie without VmRSS)
    return total / 1e6


def sample_rss(pid: int, samples: list[float], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        samples.append(tree_rss_mb(pid))
    samples.append(tree_rss_mb(pid))
