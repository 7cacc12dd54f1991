"""Helpers for the ``catdog serve`` tests: small exported models, a server subprocess, images, processes."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from catdog.data.sample_data import breed_style, draw_cat, draw_dog
from catdog.data.transforms import PreprocessConfig, eval_transform
from catdog.utils import free_port

#: How close served probabilities must be to the torch model's.
ATOL = 1e-4


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------
@dataclass
class ExportedModel:
    name: str
    path: Path
    network: object  # torch nn.Module
    config: PreprocessConfig
    sha256: str  # the checkpoint sha256 in its metadata

    def probabilities(self, image: Image.Image) -> np.ndarray:
        """The torch model's class probabilities for an RGB image (training's eval preprocessing)."""
        import torch

        batch = torch.from_numpy(eval_transform(image, self.config))[None]
        with torch.inference_mode():
            return self.network(batch).softmax(dim=1)[0].double().numpy()


def export_models(
    out: Path, sizes: dict[str, int], sha256: Callable[[str], str] = lambda name: "0" * 64
) -> dict[str, ExportedModel]:
    """Small timm models with TF 'SAME' padding (one per name, at its input size), exported by ``catdog export``.

    ``sha256(name)`` is the checkpoint sha256 each file's metadata names.
    """
    import timm
    import torch

    from catdog.export.onnx import export_onnx
    from catdog.training.network import preprocess_config_for

    result = {}
    for seed, (name, size) in enumerate(sizes.items()):
        torch.manual_seed(seed)
        network = timm.create_model("tf_mobilenetv3_small_minimal_100", num_classes=2, exportable=True).eval()
        config = preprocess_config_for(network, size)
        sha = sha256(name)
        path = export_onnx(network, config, out / f"{name}.onnx", "tf_mobilenetv3_small_minimal_100", sha).path
        result[name] = ExportedModel(name, path, network, config, sha)
    return result


def model_options(models: dict[str, ExportedModel]) -> list[str]:
    """``--model=NAME=PATH`` for each model."""
    return [f"--model={m.name}={m.path}" for m in models.values()]


# --------------------------------------------------------------------------------------------------
# a server in a subprocess
# --------------------------------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    args: list[str],
    log: Path,
    no_torch_path: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    host: str | None = "127.0.0.1",
) -> Server:
    """``catdog serve ARGS`` on a free port of 127.0.0.1, once ``/health`` answers 200.

    ``host=None`` passes no ``--host`` (the server's default address must be 127.0.0.1).
    """
    port = free_port()
    environ = {**os.environ, "PYTHONPATH": no_torch_path, **(env or {})}
    host_args = ["--host", host] if host is not None else []
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog", "serve", *host_args, "--port", str(port), *args],
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
    stop(process)
    pytest.fail(f"catdog serve not healthy after {timeout} s:\n{server.log_text()[-4000:]}")


@contextmanager
def served(
    args: list[str], log: Path, no_torch_path: str, env: dict[str, str] | None = None, host: str | None = "127.0.0.1"
) -> Iterator[Server]:
    """:func:`start_server`, then :func:`stop` when the block ends."""
    server = start_server(args, log, no_torch_path, env, host=host)
    try:
        yield server
    finally:
        stop(server.process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL to the whole process group if it has not stopped within 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def serve_once(*args: str, env: dict[str, str] | None = None, port: int | None = None) -> subprocess.CompletedProcess:
    """``catdog serve ARGS`` run to completion (for start-up errors)."""
    port = free_port() if port is None else port
    return subprocess.run(
        [sys.executable, "-m", "catdog", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


# --------------------------------------------------------------------------------------------------
# requests and images
# --------------------------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def cat(seed: int = 0, size: int = 64) -> Image.Image:
    return draw_cat(np.random.default_rng(seed), size)


def dog(seed: int = 0, size: int = 64) -> Image.Image:
    return draw_dog(np.random.default_rng(seed), size, breed_style(seed % 3, 0))


def grey_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A black 8-bit greyscale PNG of ``width`` x ``height``, written directly (cheap at any size).

    With ``rows``, only that many rows of data follow the header: a decompression bomb's header.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(1)
    row = b"\x00" * (width + 1)  # filter byte 0, then black pixels
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def post(server: Server, name: str, data: bytes, content_type: str = "image/jpeg", **kw: object) -> requests.Response:
    return requests.post(f"{server.url}/predict/{name}", data=data, headers={"Content-Type": content_type}, **kw)


def upload(server: Server, name: str, data: bytes, field: str = "file", **kw: object) -> requests.Response:
    return requests.post(f"{server.url}/predict/{name}", files={field: ("image.jpg", data, "image/jpeg")}, **kw)


def assert_matches(
    response: requests.Response, model: ExportedModel, image: Image.Image, expected: np.ndarray | None = None
) -> dict:
    """The response is the JSON contract, with the torch model's probabilities for ``image`` (within ATOL)."""
    assert response.status_code == 200, response.text
    body = response.json()
    expected = model.probabilities(image) if expected is None else expected
    assert set(body) == {"model", "label", "class_id", "probabilities", "calibrated"}
    assert body["model"] == model.name
    assert list(body["probabilities"]) == ["Cat", "Dog"]
    served = np.array([body["probabilities"]["Cat"], body["probabilities"]["Dog"]])
    np.testing.assert_allclose(served, expected, atol=ATOL, rtol=0)
    assert body["class_id"] == int(np.argmax(served))
    assert body["label"] == ["Cat", "Dog"][body["class_id"]]
    return body


# --------------------------------------------------------------------------------------------------
# an ASGI app on its own, without a server
# --------------------------------------------------------------------------------------------------
def asgi_call(app: object, path: str = "/predict/a") -> list[dict]:
    """Send one empty ``POST path`` through the ASGI ``app``; the messages it sends back."""
    messages: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))  # type: ignore[operator]
    return messages


def status_of(messages: list[dict]) -> int:
    """The status code of an ASGI response's messages."""
    return next(m["status"] for m in messages if m["type"] == "http.response.start")


# --------------------------------------------------------------------------------------------------
# processes (Linux /proc)
# --------------------------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc."""
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


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    """The process's command line, spaces between arguments ('' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
