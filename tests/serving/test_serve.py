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
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from serve_helpers import (
    ATOL,
    ExportedModel,
    Server,
    assert_matches,
    cat,
    descendants,
    dog,
    encode,
    grey_png,
    model_options,
    post,
    running,
    serve_once,
    served,
    start_server,
    stop,
    upload,
)

pytestmark = pytest.mark.slow

MAX_UPLOAD_MB = 0.25
MAX_PIXELS = 4_000_000
LIMIT = int(MAX_UPLOAD_MB * 1024 * 1024)


# --------------------------------------------------------------------------------------------------
# fixtures: a running server with the two small models of conftest's ``models``
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    args = model_options(models)
    args += ["--max-batch-size", "8", "--batch-timeout", "0.05", f"--max-upload-mb={MAX_UPLOAD_MB}"]
    args += ["--max-image-pixels", str(MAX_PIXELS), "--log-level", "debug"]
    with served(args, tmp_path_factory.mktemp("server") / "serve.log", no_torch_path) as server:
        yield server


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
    for image in (cat(1), dog(2), cat(3, size=90)):
        png = encode(image, "PNG")
        assert_matches(upload(server, name, png), model, image)
        assert_matches(post(server, name, png, "image/png"), model, image)
        assert_matches(post(server, name, png, "application/octet-stream"), model, image)


def _exif_rotated_jpeg() -> tuple[bytes, Image.Image, Image.Image]:
    """A JPEG stored rotated with EXIF orientation 6, the upright image, and the image as stored."""
    upright = dog(5, size=80)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    return data, stored.transpose(Image.Transpose.ROTATE_270), stored


def _image_variants() -> dict[str, tuple[bytes, Image.Image]]:
    """Upload bytes and the RGB image the server is expected to see, for each unusual image kind."""
    base = cat(4, size=72)
    grey = base.convert("L")
    variants = {"greyscale": (encode(grey, "PNG"), grey.convert("RGB"))}

    rgba = base.convert("RGBA")
    alpha = np.zeros(rgba.size[::-1], dtype=np.uint8)
    alpha[:, : rgba.size[0] // 2] = 255  # right half transparent: shows the white background
    rgba.putalpha(Image.fromarray(alpha))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    variants["rgba"] = (encode(rgba, "PNG"), Image.alpha_composite(white, rgba).convert("RGB"))

    cmyk = encode(base.convert("CMYK"), "JPEG", quality=95)
    variants["cmyk_jpeg"] = (cmyk, Image.open(io.BytesIO(cmyk)).convert("RGB"))

    grey16 = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)  # full 16-bit range
    assert grey16.mode.startswith("I;16")
    variants["png_16bit"] = (encode(grey16, "PNG"), grey.convert("RGB"))

    first, second = cat(6, size=64), dog(7, size=64)
    gif = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
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
    assert_matches(upload(server, "pretrained", data), models["pretrained"], expected_image)


def test_exif_rotation_and_gif_frame_change_the_answer(models: dict[str, ExportedModel]) -> None:
    """The two tests above tell a rotated or wrong-frame image apart: the answers differ by far more than ATOL."""
    model = models["pretrained"]
    _, upright, stored = _exif_rotated_jpeg()
    assert np.abs(model.probabilities(upright) - model.probabilities(stored)).max() > 10 * ATOL
    gif = Image.open(io.BytesIO(_image_variants()["animated_gif"][0]))
    gif.seek(1)
    second = gif.convert("RGB")
    first = _image_variants()["animated_gif"][1]
    assert np.abs(model.probabilities(first) - model.probabilities(second)).max() > 10 * ATOL


def _truncated_jpeg() -> bytes:
    data = encode(cat(8, size=64), "JPEG", quality=90)
    return data[: len(data) // 2]


BAD_REQUESTS = {
    "not_an_image": (lambda s: post(s, "pretrained", b"this is not an image at all"), 400, "invalid_image"),
    "empty_body": (lambda s: post(s, "pretrained", b""), 400, "empty_body"),
    "empty_file": (lambda s: upload(s, "pretrained", b""), 400, "empty_body"),
    "truncated_jpeg": (lambda s: post(s, "pretrained", _truncated_jpeg()), 400, "invalid_image"),
    "oversized_upload": (lambda s: post(s, "pretrained", os.urandom(LIMIT + 5000)), 413, "upload_too_large"),
    "oversized_chunked_upload": (
        lambda s: post(s, "pretrained", iter([os.urandom(64 * 1024)] * 6)),
        413,
        "upload_too_large",
    ),
    "decompression_bomb": (
        lambda s: post(s, "pretrained", grey_png(30000, 30000, rows=4), "image/png"),
        413,
        "image_too_large",
    ),
    "above_max_image_pixels": (
        lambda s: post(s, "pretrained", encode(Image.new("L", (2100, 2000)), "PNG"), "image/png"),
        413,
        "image_too_large",
    ),
    "wrong_form_field": (lambda s: upload(s, "pretrained", encode(cat(), "PNG"), "image"), 422, "missing_file"),
    "text_form_field": (
        lambda s: requests.post(f"{s.url}/predict/pretrained", files={"file": (None, "hello")}),
        422,
        "missing_file",
    ),
    "json_body": (lambda s: post(s, "pretrained", b'{"image": "cat.jpg"}', "application/json"), 415, None),
    "no_content_type": (
        lambda s: requests.post(f"{s.url}/predict/pretrained", data=encode(cat(), "PNG")),
        415,
        "unsupported_media_type",
    ),
    "malformed_multipart": (
        lambda s: post(s, "pretrained", b"--x\r\nnot a part", "multipart/form-data; boundary=zzz"),
        400,
        "bad_request",
    ),
    "unknown_model": (lambda s: upload(s, "resnet", encode(cat(), "PNG")), 404, "unknown_model"),
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
    if error == "image_too_large":  # the limit in force is the option's, and the message says so
        assert f"above the limit of {MAX_PIXELS} pixels (--max-image-pixels)" in body["detail"]
    assert requests.get(f"{server.url}/health").status_code == 200
    image = dog(9)
    assert_matches(upload(server, "pretrained", encode(image, "PNG")), models["pretrained"], image)


def test_bad_uploads_sent_with_good_ones_do_not_fail_them(server: Server, models: dict[str, ExportedModel]) -> None:
    """Good and bad uploads released at the same moment: every good one answers right, every bad one 4xx."""
    good = [(cat(20 + i) if i % 2 else dog(20 + i)) for i in range(12)]
    bad = [b"not an image", _truncated_jpeg(), b"", b"GIF89a broken"] * 3
    jobs: list[tuple[str, object]] = [("good", image) for image in good] + [("bad", data) for data in bad]
    barrier = threading.Barrier(len(jobs))

    def send(job: tuple[str, object]) -> requests.Response:
        kind, payload = job
        data = encode(payload, "PNG") if kind == "good" else payload  # type: ignore[arg-type]
        barrier.wait()
        return post(server, "pretrained", data, "image/png")  # type: ignore[arg-type]

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(send, jobs[::2] + jobs[1::2]))
    ordered = jobs[::2] + jobs[1::2]
    for (kind, payload), response in zip(ordered, responses, strict=True):
        if kind == "good":
            assert_matches(response, models["pretrained"], payload)  # type: ignore[arg-type]
        else:
            assert response.status_code == 400, response.text
            assert response.json()["error"] in {"invalid_image", "empty_body"}
    log = server.log_text().splitlines()
    batches = [int(line.rsplit(" ", 1)[1]) for line in log if "model 'pretrained': batch of" in line]
    assert max(batches) > 1, "the good requests were never batched together"


def test_concurrent_clients_on_both_endpoints(server: Server, models: dict[str, ExportedModel]) -> None:
    images = [(cat(40 + i) if i % 2 else dog(40 + i)) for i in range(8)]

    def client(index: int) -> list[tuple[str, int, requests.Response]]:
        results = []
        with requests.Session() as session:
            for j in range(4):
                name = "pretrained" if (index + j) % 2 else "scratch"
                k = (index + j) % len(images)
                url = f"{server.url}/predict/{name}"
                response = session.post(url, files={"file": ("x.png", encode(images[k], "PNG"), "image/png")})
                results.append((name, k, response))
        return results

    expected = {(name, k): models[name].probabilities(image) for name in models for k, image in enumerate(images)}
    with ThreadPoolExecutor(16) as pool:
        for results in pool.map(client, range(16)):
            for name, k, response in results:
                assert_matches(response, models[name], images[k], expected[name, k])
    assert requests.get(f"{server.url}/health").status_code == 200


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_server_and_every_worker(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path: Path, signum: signal.Signals
) -> None:
    """Models from CATDOG_MODELS; two workers per model; the signal goes to the main process only."""
    env = {"CATDOG_MODELS": ",".join(f"{m.name}={m.path}" for m in models.values()), "CATDOG_WORKERS": "2"}
    server = start_server(["--log-level", "warning"], tmp_path / "serve.log", no_torch_path, env=env)
    try:
        children = descendants(server.process.pid)
        assert len(children) >= 5  # 4 inference workers, the HTTP server(s) and the queue manager
        started = time.monotonic()
        server.process.send_signal(signum)
        returncode = server.process.wait(20)
        elapsed = time.monotonic() - started
    finally:
        stop(server.process)
    assert returncode == 0, server.log_text()[-3000:]
    # about a second here; only a stop that waits out a timeout (e.g. a worker left to be killed) takes 15 s
    assert elapsed < 15, f"took {elapsed:.1f} s to stop"
    deadline = time.monotonic() + 2
    while any(running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in children if running(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes left behind: {survivors}"
    assert "Traceback" not in server.log_text()


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    result = serve_once("--model", f"pretrained={tmp_path / 'nope.onnx'}")
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
        result = serve_once("--model", f"m={path}")
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


def test_max_image_pixels_is_the_one_limit_in_force(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path: Path
) -> None:
    """Above Pillow's own limit (about 89.5 M pixels): a 108 MP photo passes when allowed, 130 MP does not."""
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 108_000_000
    model = models["scratch"]
    args = [f"--model=scratch={model.path}", "--max-image-pixels", "120000000", "--max-upload-mb", "5"]
    server = start_server(args, tmp_path / "serve.log", no_torch_path)
    try:
        black = Image.new("RGB", (80, 60))  # a black image stays black through resize and crop
        assert_matches(post(server, "scratch", grey_png(12000, 9000), "image/png"), model, black)
        response = post(server, "scratch", grey_png(13000, 10000, rows=4), "image/png")
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "image_too_large"
        assert (
            "13000x10000 = 130000000 pixels, above the limit of 120000000 pixels (--max-image-pixels)"
            in (response.json()["detail"])
        )
    finally:
        stop(server.process)
    assert "Traceback" not in server.log_text()


def test_invalid_model_name_and_directory_are_named(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read: the name is refused first")
    bad_name = serve_once("--model", f"my model={model}")
    assert "'my model' is not a valid model name" in bad_name.stderr and "file not found" not in bad_name.stderr
    directory = serve_once("--model", f"pretrained={tmp_path}")
    assert f"pretrained={tmp_path}: is a directory, not an ONNX file" in directory.stderr
    for result in (bad_name, directory):
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("catdog serve: error: --model ") and "Traceback" not in result.stderr


def _processes_with_env(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_port_in_use_is_a_clear_error_and_leaves_nothing_running(models: dict[str, ExportedModel]) -> None:
    marker = f"CATDOG_TEST_MARKER={os.getpid()}-{time.monotonic_ns()}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {marker.split("=")[0]: marker.split("=")[1]}
        result = serve_once("--model", f"pretrained={models['pretrained'].path}", port=port, env=env)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("catdog serve: error: --port ") and f"port {port} on 127.0.0.1 is already in use" in line
    assert "--port" in line.split("choose another", 1)[1]
    assert "Traceback" not in result.stderr
    assert _processes_with_env(marker) == []
