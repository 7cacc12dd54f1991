"""Small helpers with one home: file hashes, endpoint names, free ports, CPU kernel settings, output capture.
Standard library only."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


#: oneDNN ISA limit -> ATen's kernel set and MKL's instruction limit for the same CPU generation.
CPU_ISAS = {
    "AVX512_CORE": ("avx512", "AVX512"),
    "AVX2": ("avx2", "AVX2"),
    "SSE41": ("default", "SSE4_2"),
}


def cpu_kernel_env(isa: str | None = None, threads: int | None = None) -> dict[str, str]:
    """Environment variables that make torch, MKL, oneDNN and TensorFlow compute as another CPU would.

    ``isa`` (a key of :data:`CPU_ISAS`) limits the instruction set of oneDNN (``ONEDNN_MAX_CPU_ISA``), of ATen's
    own kernels (``ATEN_CPU_CAPABILITY``) and of MKL (``MKL_ENABLE_INSTRUCTIONS``); ``threads`` sets the thread
    count of OpenMP, MKL and TensorFlow. They are read when those libraries start, so they must be in the
    environment of a process before it imports torch or TensorFlow.
    """
    env: dict[str, str] = {}
    if isa is not None:
        if isa.upper() not in CPU_ISAS:
            raise ValueError(f"cpu isa {isa!r}: choose one of {', '.join(CPU_ISAS)}")
        aten, mkl = CPU_ISAS[isa.upper()]
        env |= {"ONEDNN_MAX_CPU_ISA": isa.upper(), "ATEN_CPU_CAPABILITY": aten, "MKL_ENABLE_INSTRUCTIONS": mkl}
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads {threads}: must be 1 or more")
        names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
        env |= dict.fromkeys(names, str(threads))
    return env


@contextmanager
def output_to(log: Path, echo: bool = False) -> Iterator[None]:
    """Everything written to stdout and stderr goes to ``log``: Python, C libraries, child processes and logging
    handlers made earlier alike, warnings included; also to the console when ``echo``."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    console, saved = os.dup(1), (os.dup(1), os.dup(2))
    streams = sys.stdout, sys.stderr

    def pump() -> None:
        with log.open("ab") as handle:
            while chunk := os.read(read_end, 1 << 16):
                handle.write(chunk)
                handle.flush()  # the log can be followed while the stage runs
                if echo:
                    os.write(console, chunk)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    # Streams on fds 1 and 2 themselves: a handler that keeps one writes to the console once the stage is over.
    out, err = (open(fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False) for fd in (1, 2))  # noqa: SIM115
    handlers = [h for h in _stream_handlers() if h.stream in (*streams, sys.__stdout__, sys.__stderr__)]
    previous = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(err)
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        out.flush()
        err.flush()
        for handler, stream in zip(handlers, previous, strict=True):
            handler.setStream(stream)
        sys.stdout, sys.stderr = streams
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        thread.join(timeout=30)
        os.close(read_end)
        os.close(console)


def _stream_handlers() -> list[logging.StreamHandler]:
    """The console handlers of every logger (file handlers excluded)."""
    loggers = [
        logging.getLogger(),
        *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)),
    ]
    return [
        h for x in loggers for h in x.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]  # fmt: skip
