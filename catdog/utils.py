"""Small helpers with one home: file hashes, endpoint names, free ports. Standard library only."""

from __future__ import annotations

import hashlib
import os
import re
import socket

#: What a model name may look like: it becomes the URL path ``/predict/<name>`` and the ONNX file name.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MODEL_NAME_RULE = "a letter or digit, then letters, digits, '_', '-' or '.'"


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_valid_model_name(name: str) -> bool:
    """Whether ``name`` can name a served model (see :data:`MODEL_NAME_PATTERN`)."""
    return bool(MODEL_NAME_PATTERN.match(name))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
