"""``catdog serve`` starting and stopping: signals stop every worker, clear errors for bad model files, names,
directories and a port in use, the pixel limit, and no torch in the serving process.

Every server here runs with a ``torch`` package on ``PYTHONPATH`` that refuses to import.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from serve_helpers import (
    ExportedModel,
    assert_matches,
    descendants,
    grey_png,
    post,
    running,
    serve_once,
    start_server,
    stop,
)

pytestmark = pytest.mark.slow


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
