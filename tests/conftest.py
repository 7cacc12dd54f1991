"""Shared fixtures: generated Kaggle-layout sources and a fused dataset, made once per session; for serving
tests, a torch that refuses to import and two small exported models (made once per module);
:func:`skip_or_fail` for tests whose tools CI on a root Linux machine can install (a skip there fails); and the
options ``--cpu-isa`` and ``--threads``, which run the suite as another CPU would (docs/testing.md)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from catdog.data.sample_data import SampleData, generate
from catdog.utils import CPU_ISAS, cpu_kernel_env

if TYPE_CHECKING:
    from serve_helpers import ExportedModel

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

#: Set in the environment of a pytest run that ``--cpu-isa``/``--threads`` started again (so it happens once).
RESTARTED = "CATDOG_TEST_KERNELS_SET"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("catdog", "catdog: run as another CPU would")
    group.addoption("--cpu-isa", choices=sorted(CPU_ISAS), type=str.upper, default=None,
                    help="limit oneDNN, ATen and MKL to this instruction set, in this process and every one it "
                         "starts (as an older CPU computes)")  # fmt: skip
    group.addoption("--threads", type=int, default=None, help="OpenMP/MKL/TensorFlow threads (as a smaller CPU)")


def pytest_configure(config: pytest.Config) -> None:
    """Start pytest again with the kernel settings in its environment: the libraries read them when they load."""
    wanted = cpu_kernel_env(config.getoption("cpu_isa"), config.getoption("threads"))
    if not wanted or all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    if os.environ.get(RESTARTED):
        raise pytest.UsageError(f"--cpu-isa/--threads: the restarted run still lacks {wanted}")
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()  # the new process writes to the real stdout/stderr
    os.environ.update(wanted, **{RESTARTED: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def pytest_report_header(config: pytest.Config) -> str:
    names = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS")
    settings = " ".join(f"{name}={os.environ[name]}" for name in names if name in os.environ)
    default = "this machine's own (pytest --cpu-isa AVX2 --threads 1 runs as another CPU)"
    return f"cpu kernels: {settings or default}"


#: Small enough for CPU tests, large enough for a breed-disjoint split and a learning signal.
SAMPLE = dict(cats=120, dogs_per_breed=12, breeds=8, size=64, seed=0)
CAT_TRAIN, CAT_TEST = 84, 36


@pytest.fixture(scope="session")
def sample_sources(tmp_path_factory: pytest.TempPathFactory) -> SampleData:
    """Both Kaggle layouts as folders (no corrupt files)."""
    return generate(tmp_path_factory.mktemp("kaggle"), **SAMPLE)


@pytest.fixture(scope="session")
def fused_dataset(tmp_path_factory: pytest.TempPathFactory, sample_sources: SampleData) -> Path:
    """``dataset/{train,test}/{cat,dog}`` fused from :func:`sample_sources`. Treat it as read-only."""
    from catdog.data.fusion import fuse

    out = tmp_path_factory.mktemp("fused") / "dataset"
    fuse(
        sample_sources.cats_source,
        sample_sources.dogs_source,
        out,
        cat_train=CAT_TRAIN,
        cat_test=CAT_TEST,
        seed=42,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def no_torch_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ``PYTHONPATH`` entry whose ``torch`` package raises on import (for servers that must not import torch)."""
    root = tmp_path_factory.mktemp("no_torch")
    (root / "torch").mkdir()
    (root / "torch" / "__init__.py").write_text("raise ImportError('the serving path imported torch')\n")
    return str(root)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportedModel]:
    """Two small exported models at different input sizes: 'pretrained' (48 px) and 'scratch' (32 px)."""
    from serve_helpers import export_models

    return export_models(tmp_path_factory.mktemp("models"), {"pretrained": 48, "scratch": 32})


@pytest.fixture(scope="session")
def small_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The container check's two small ONNX models (pretrained, scratch), exported once for the session."""
    pytest.importorskip("torch")
    from container_helpers import check

    return check.export_small_models(tmp_path_factory.mktemp("container") / "models")


def skip_is_a_failure(env: dict[str, str], euid: int, platform: str, apt_get: str | None) -> bool:
    """Under CI on a root Linux machine with apt-get, podman and Chromium install from Debian: a skip is a failure."""
    return env.get("CI", "").lower() in {"true", "1"} and platform.startswith("linux") and euid == 0 and bool(apt_get)


@pytest.fixture(scope="session")
def skip_or_fail() -> Callable[[str, str], NoReturn]:
    """``skip_or_fail(reason, tool)``: skip the test with ``reason``; fail instead where :func:`skip_is_a_failure`.

    ``tool`` is what was missing (``"podman"``, ``"Chromium"``), named in the failure. The machine is read
    when it is called, not when the fixture is made.
    """

    def skip_or_fail(reason: str, tool: str) -> NoReturn:
        if skip_is_a_failure(dict(os.environ), os.geteuid(), sys.platform, shutil.which("apt-get")):
            pytest.fail(f"CI on a root Linux machine, where {tool} installs from Debian, must run this: {reason}")
        pytest.skip(reason)

    return skip_or_fail
