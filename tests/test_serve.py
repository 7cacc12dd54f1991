"""``catdog serve``: real servers on 127.0.0.1 answering real HTTP requests, with small exported models.

Every server here runs with a ``torch`` package on ``PYTHONPATH`` that refuses to import, so each
answer also proves that no serving process (HTTP servers, inference workers) imports torch.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from catdog.sample_data import breed_style, draw_cat, draw_dog
from catdog.transforms import PreprocessConfig, eval_transform

pytestmark = pytest.mark.slow

MAX_UPLOAD_MB = 0.25
LIMIT = int(MAX_UPLOAD_MB * 1024 * 1024)


# --------------------------------------------------------------------------------------------------
# fixtures: two small exported models and a running server
# --------------------------------------------------------------------------------------------------
@dataclass
class ExportedModel:
    name: str
    path: Path
    network: object  # torch nn.Module
    config: PreprocessConfig

    def probabilities(self, image: Image.Image) -> np.ndarray:
        """The torch model's class probabilities for an RGB image (training's eval preprocessing)."""
        import torch

        batch = torch.from_numpy(eval_transform(image, self.config))[None]
        with torch.inference_mode():
            return self.network(batch).softmax(dim=1)[0].double().numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportedModel]:
    """Two timm models with TF 'SAME' padding at different input sizes, exported by ``catdog export``'s core."""
    import timm
    import torch

    from catdog.export import export_onnx
    from catdog.model import preprocess_config_for

    out = tmp_path_factory.mktemp("models")
    result = {}
    for seed, (name, size) in enumerate([("pretrained", 48), ("scratch", 32)]):
        torch.manual_seed(seed)
        network = timm.create_model("tf_mobilenetv3_small_minimal_100", num_classes=2, exportable=True).eval()
        config = preprocess_config_for(network, size)
        path = export_onnx(network, config, out / f"{name}.onnx", "tf_mobilenetv3_small_minimal_100", "0" * 64).path
        result[name] = ExportedModel(name, path, network, config)
    return result


@pytest.fixture(scope="module")
def no_torch_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PYTHONPATH entry whose ``torch`` package raises on import."""
    root = tmp_path_factory.mktemp("no_torch")
    (root / "torch").mkdir()
    (root / "torch" / "__init__.py").write_text("raise ImportError('the serving path imported torch')\n")
    return str(root)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _start_server(
    args: list[str], log: Path, no_torch_path: str, env: dict[str, str] | None = None, timeout: float = 120
) -> Server:
    port = _free_port()
    environ = {**os.environ, "PYTHONPATH": no_torch_path, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=environ,
        start_new_session=True,  # signals in the tests reach only the server's main process
    )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"catdog serve exited with {process.returncode}:\n{server.log_text()[-4000:]}")
        try:
            if requests.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    _stop(process)
    pytest.fail(f"catdog serve not healthy after {timeout} s:\n{server.log_text()[-4000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.fixture(scope="module")
def server(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    args = [f"--model={m.name}={m.path}" for m in models.values()]
    args += ["--max-batch-size", "8", "--batch-timeout", "0.05", f"--max-upload-mb={MAX_UPLOAD_MB}"]
    args += ["--max-image-pixels", "4000000", "--log-level", "debug"]
    server = _start_server(args, tmp_path_factory.mktemp("server") / "serve.log", no_torch_path)
    yield server
    _stop(server.process)


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------
def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _cat(seed: int = 0, size: int = 64) -> Image.Image:
    return draw_cat(np.random.default_rng(seed), size)


def _dog(seed: int = 0, size: int = 64) -> Image.Image:
    return draw_dog(np.random.default_rng(seed), size, breed_style(seed % 3, 0))


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _post(server: Server, name: str, data: bytes, content_type: str = "image/jpeg", **kw: object) -> requests.Response:
    return requests.post(f"{server.url}/predict/{name}", data=data, headers={"Content-Type": content_type}, **kw)


def _upload(server: Server, name: str, data: bytes, field: str = "file") -> requests.Response:
    return requests.post(f"{server.url}/predict/{name}", files={field: ("image.jpg", data, "image/jpeg")})


def _assert_matches(
    response: requests.Response, model: ExportedModel, image: Image.Image, expected: np.ndarray | None = None
) -> dict:
    """The response is the JSON contract, with the torch model's probabilities for ``image`` (within 1e-4)."""
    assert response.status_code == 200, response.text
    body = response.json()
    expected = model.probabilities(image) if expected is None else expected
    assert set(body) == {"model", "label", "class_id", "probabilities"}
    assert body["model"] == model.name
    assert list(body["probabilities"]) == ["Cat", "Dog"]
    served = np.array([body["probabilities"]["Cat"], body["probabilities"]["Dog"]])
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=0)
    assert body["class_id"] == int(np.argmax(served))
    assert body["label"] == ["Cat", "Dog"][body["class_id"]]
    return body


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------
def test_health_lists_models_with_their_metadata(server: Server, models: dict[str, ExportedModel]) -> None:
    response = requests.get(f"{server.url}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["models"]) == {"pretrained", "scratch"}
    for name, model in models.items():
        info = body["models"][name]
        assert info["endpoint"] == f"/predict/{name}"
        assert info["image_size"] == model.config.image_size
        assert info["classes"] == ["Cat", "Dog"]
        assert info["model_name"] == "tf_mobilenetv3_small_minimal_100"


@pytest.mark.parametrize("name", ["pretrained", "scratch"])
def test_both_endpoints_match_torch_for_multipart_and_raw_uploads(
    server: Server, models: dict[str, ExportedModel], name: str
) -> None:
    model = models[name]
    for image in (_cat(1), _dog(2), _cat(3, size=90)):
        png = _encode(image, "PNG")
        _assert_matches(_upload(server, name, png), model, image)
        _assert_matches(_post(server, name, png, "image/png"), model, image)
        _assert_matches(_post(server, name, png, "application/octet-stream"), model, image)


def _exif_rotated_jpeg() -> tuple[bytes, Image.Image, Image.Image]:
    """A JPEG stored rotated with EXIF orientation 6, the upright image, and the image as stored."""
    upright = _dog(5, size=80)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = _encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    return data, stored.transpose(Image.Transpose.ROTATE_270), stored


def _image_variants() -> dict[str, tuple[bytes, Image.Image]]:
    """Upload bytes and the RGB image the server is expected to see, for each unusual image kind."""
    base = _cat(4, size=72)
    grey = base.convert("L")
    variants = {"greyscale": (_encode(grey, "PNG"), grey.convert("RGB"))}

    rgba = base.convert("RGBA")
    alpha = np.zeros(rgba.size[::-1], dtype=np.uint8)
    alpha[:, : rgba.size[0] // 2] = 255  # right half transparent: shows the white background
    rgba.putalpha(Image.fromarray(alpha))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    variants["rgba"] = (_encode(rgba, "PNG"), Image.alpha_composite(white, rgba).convert("RGB"))

    cmyk = _encode(base.convert("CMYK"), "JPEG", quality=95)
    variants["cmyk_jpeg"] = (cmyk, Image.open(io.BytesIO(cmyk)).convert("RGB"))

    grey16 = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)  # full 16-bit range
    assert grey16.mode.startswith("I;16")
    variants["png_16bit"] = (_encode(grey16, "PNG"), grey.convert("RGB"))

    first, second = _cat(6, size=64), _dog(7, size=64)
    gif = _encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    frame0 = Image.open(io.BytesIO(gif)).convert("RGB")
    variants["animated_gif"] = (gif, frame0)

    data, upright, _ = _exif_rotated_jpeg()
    variants["exif_rotated_jpeg"] = (data, upright)
    return variants


@pytest.mark.parametrize("kind", ["greyscale", "rgba", "cmyk_jpeg", "png_16bit", "animated_gif", "exif_rotated_jpeg"])
def test_unusual_images_are_served_like_their_rgb_equivalent(
    server: Server, models: dict[str, ExportedModel], kind: str
) -> None:
    data, expected_image = _image_variants()[kind]
    _assert_matches(_upload(server, "pretrained", data), models["pretrained"], expected_image)


def test_exif_rotation_and_gif_frame_change_the_answer(models: dict[str, ExportedModel]) -> None:
    """The two tests above could not tell a rotated or wrong-frame image apart if the model ignored them."""
    model = models["pretrained"]
    _, upright, stored = _exif_rotated_jpeg()
    assert np.abs(model.probabilities(upright) - model.probabilities(stored)).max() > 1e-2
    gif = Image.open(io.BytesIO(_image_variants()["animated_gif"][0]))
    gif.seek(1)
    second = gif.convert("RGB")
    first = _image_variants()["animated_gif"][1]
    assert np.abs(model.probabilities(first) - model.probabilities(second)).max() > 1e-2


def _truncated_jpeg() -> bytes:
    data = _encode(_cat(8, size=64), "JPEG", quality=90)
    return data[: len(data) // 2]


BAD_REQUESTS = {
    "not_an_image": (lambda s: _post(s, "pretrained", b"this is not an image at all"), 400, "invalid_image"),
    "empty_body": (lambda s: _post(s, "pretrained", b""), 400, "empty_body"),
    "empty_file": (lambda s: _upload(s, "pretrained", b""), 400, "empty_body"),
    "truncated_jpeg": (lambda s: _post(s, "pretrained", _truncated_jpeg()), 400, "invalid_image"),
    "oversized_upload": (lambda s: _post(s, "pretrained", os.urandom(LIMIT + 5000)), 413, "upload_too_large"),
    "oversized_chunked_upload": (
        lambda s: _post(s, "pretrained", iter([os.urandom(64 * 1024)] * 6)),
        413,
        "upload_too_large",
    ),
    "decompression_bomb": (lambda s: _post(s, "pretrained", _bomb_png(), "image/png"), 413, "image_too_large"),
    "above_max_image_pixels": (
        lambda s: _post(s, "pretrained", _encode(Image.new("L", (2100, 2000)), "PNG"), "image/png"),
        413,
        "image_too_large",
    ),
    "wrong_form_field": (lambda s: _upload(s, "pretrained", _encode(_cat(), "PNG"), "image"), 422, "missing_file"),
    "text_form_field": (
        lambda s: requests.post(f"{s.url}/predict/pretrained", files={"file": (None, "hello")}),
        422,
        "missing_file",
    ),
    "json_body": (lambda s: _post(s, "pretrained", b'{"image": "cat.jpg"}', "application/json"), 415, None),
    "no_content_type": (
        lambda s: requests.post(f"{s.url}/predict/pretrained", data=_encode(_cat(), "PNG")),
        415,
        "unsupported_media_type",
    ),
    "malformed_multipart": (
        lambda s: _post(s, "pretrained", b"--x\r\nnot a part", "multipart/form-data; boundary=zzz"),
        400,
        "bad_request",
    ),
    "unknown_model": (lambda s: _upload(s, "resnet", _encode(_cat(), "PNG")), 404, "unknown_model"),
    "get_instead_of_post": (lambda s: requests.get(f"{s.url}/predict/pretrained"), 405, "method_not_allowed"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_json_4xx_and_the_server_keeps_serving(
    server: Server, models: dict[str, ExportedModel], case: str
) -> None:
    send, status, error = BAD_REQUESTS[case]
    response = send(server)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == (error or "unsupported_media_type")
    assert isinstance(body["detail"], str) and body["detail"]
    assert requests.get(f"{server.url}/health").status_code == 200
    image = _dog(9)
    _assert_matches(_upload(server, "pretrained", _encode(image, "PNG")), models["pretrained"], image)


def test_bad_uploads_sent_with_good_ones_do_not_fail_them(server: Server, models: dict[str, ExportedModel]) -> None:
    """Good and bad uploads released at the same moment: every good one answers right, every bad one 4xx."""
    good = [(_cat(20 + i) if i % 2 else _dog(20 + i)) for i in range(12)]
    bad = [b"not an image", _truncated_jpeg(), b"", b"GIF89a broken"] * 3
    jobs: list[tuple[str, object]] = [("good", image) for image in good] + [("bad", data) for data in bad]
    barrier = threading.Barrier(len(jobs))

    def send(job: tuple[str, object]) -> requests.Response:
        kind, payload = job
        data = _encode(payload, "PNG") if kind == "good" else payload  # type: ignore[arg-type]
        barrier.wait()
        return _post(server, "pretrained", data, "image/png")  # type: ignore[arg-type]

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(send, jobs[::2] + jobs[1::2]))
    ordered = jobs[::2] + jobs[1::2]
    for (kind, payload), response in zip(ordered, responses, strict=True):
        if kind == "good":
            _assert_matches(response, models["pretrained"], payload)  # type: ignore[arg-type]
        else:
            assert response.status_code == 400, response.text
            assert response.json()["error"] in {"invalid_image", "empty_body"}
    log = server.log_text().splitlines()
    batches = [int(line.rsplit(" ", 1)[1]) for line in log if "model 'pretrained': batch of" in line]
    assert max(batches) > 1, "the good requests were never batched together"


def test_concurrent_clients_on_both_endpoints(server: Server, models: dict[str, ExportedModel]) -> None:
    images = [(_cat(40 + i) if i % 2 else _dog(40 + i)) for i in range(8)]

    def client(index: int) -> list[tuple[str, int, requests.Response]]:
        results = []
        with requests.Session() as session:
            for j in range(4):
                name = "pretrained" if (index + j) % 2 else "scratch"
                k = (index + j) % len(images)
                url = f"{server.url}/predict/{name}"
                response = session.post(url, files={"file": ("x.png", _encode(images[k], "PNG"), "image/png")})
                results.append((name, k, response))
        return results

    expected = {(name, k): models[name].probabilities(image) for name in models for k, image in enumerate(images)}
    with ThreadPoolExecutor(16) as pool:
        for results in pool.map(client, range(16)):
            for name, k, response in results:
                _assert_matches(response, models[name], images[k], expected[name, k])
    assert requests.get(f"{server.url}/health").status_code == 200


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_server_and_every_worker(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path: Path, signum: signal.Signals
) -> None:
    """Models from CATDOG_MODELS; two workers per model; the signal goes to the main process only."""
    env = {"CATDOG_MODELS": ",".join(f"{m.name}={m.path}" for m in models.values()), "CATDOG_WORKERS": "2"}
    server = _start_server(["--log-level", "warning"], tmp_path / "serve.log", no_torch_path, env=env)
    try:
        children = _descendants(server.process.pid)
        assert len(children) >= 5  # 4 inference workers, the HTTP server(s) and the queue manager
        started = time.monotonic()
        server.process.send_signal(signum)
        returncode = server.process.wait(20)
        elapsed = time.monotonic() - started
    finally:
        _stop(server.process)
    assert returncode == 0, server.log_text()[-3000:]
    assert elapsed < 5, f"took {elapsed:.1f} s to stop"
    deadline = time.monotonic() + 2
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in children if _running(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes left behind: {survivors}"
    assert "Traceback" not in server.log_text()


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "catdog", "serve", "--host", "127.0.0.1", "--port", str(_free_port()), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    result = _serve("--model", f"pretrained={tmp_path / 'nope.onnx'}")
    assert result.returncode == 2
    assert "nope.onnx: file not found" in result.stderr and "catdog export" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_or_foreign_model_files_are_clear_errors(tmp_path: Path, models: dict[str, ExportedModel]) -> None:
    import onnx

    from catdog import cli

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(models["scratch"].path.read_bytes()[:5000])
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(models["scratch"].path)
    del proto.metadata_props[:]
    onnx.save_model(proto, foreign)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for path, message in [(corrupt, "cannot load it as an ONNX model"), (empty, "cannot load"), (foreign, "metadata")]:
        result = _serve("--model", f"m={path}")
        assert result.returncode == 2, result.stderr
        assert str(path) in result.stderr and message in result.stderr
    assert cli.main(["serve"]) == 2  # no --model and no CATDOG_MODELS


def test_serving_imports_no_torch(models: dict[str, ExportedModel]) -> None:
    """Building the server (models loaded, LitServe app ready) in a fresh interpreter imports no torch."""
    code = f"""
import json
import sys
from catdog.serving.app import build_server
from catdog.serving.models import load_model_info
import catdog.serve  # the module name the container's build check imports
models = [load_model_info(n, p) for n, p in {[(m.name, str(m.path)) for m in models.values()]!r}]
server = build_server(models)
api = server.litapi_connector.lit_apis[0]
api.setup("cpu")
import numpy as np
probs = api.predict(api.batch([api.decode_request(np.zeros((48, 48, 3), np.uint8))] * 2))
assert probs.shape == (2, 2), probs.shape
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {{"torch", "torchvision", "timm", "lightning"}})
print(json.dumps(heavy))
sys.exit(1 if heavy else 0)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
