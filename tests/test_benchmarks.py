"""Every script in benchmarks/ still runs: each in its ``--quick`` form exits 0 and prints its figures.

The quick forms measure nothing (tiny models, a few steps); they exist so that a change to catdog that breaks
a benchmark fails here instead of the next time someone measures. Each runs as a user runs it
(``python benchmarks/NAME.py --quick`` from the repository root), in a subprocess.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"[-+]?\d+(?:\.\d+)?"

#: For each benchmark, lines its output must hold: each pattern's groups are figures (numbers).
#: Benchmarks whose ``--quick`` run lives in another test module (beside what they measure).
QUICK_RUN_ELSEWHERE = {"full_scale": "tests/data/test_full_scale.py"}
FIGURES: dict[str, list[str]] = {
    "train_throughput": [
        rf"train: plain\s+({NUMBER})\s+1\.000x",
        rf"train: lightning\s+({NUMBER})\s+({NUMBER})x",
        rf"train: poutyne\s+({NUMBER})\s+({NUMBER})x",
        rf"lightning / plain\s+= ({NUMBER}) \(goal >= 0\.95\)",
        rf"data / training\s+= ({NUMBER}) \(goal >= 2\)",
    ],
    "fusion": [
        rf"sources: ({NUMBER}) of the generated files are written",
        rf"cp -r\s+({NUMBER})\s+1\.00",
        rf"fuse copy --verify full\s+({NUMBER})\s+({NUMBER})",
        rf"fuse copy / cp -r: ({NUMBER})x wall",
        rf"fuse hardlink / cp -rl: ({NUMBER})x wall",
    ],
    "quantize": [
        rf"\nfp32\s+({NUMBER})\s+1\.00x\s+({NUMBER})\s+1\.00x\s+({NUMBER})",
        rf"int8 \(QDQ[^\n]*\)\s+({NUMBER})\s+({NUMBER})x\s+({NUMBER})\s+({NUMBER})x"  # images/s and ratio, b=1 and 4
        rf"\s+({NUMBER})\s+({NUMBER})p\s+({NUMBER})",  # accuracy, change, agreement
        rf"goal int8 >= 1\.8x fp32 images/s: ({NUMBER})x",
        rf"goal accuracy change >= -0\.5 points: ({NUMBER}) points",
    ],
    "serve": [
        rf"\n\s+1\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})x",  # (a) batch 1: torch, onnxruntime, ratio
        rf"batching off\s+8\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})x",
        rf"batching on \(4\)\s+16\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})x",
        rf"\(c\) served, 8 clients, batching off: fp32 ({NUMBER})/s, int8 ({NUMBER})/s",
        rf"served at 8 clients >= 0\.9x in-process at 8 \([^)]*\)\)?: ({NUMBER})x",
        rf"int8 served >= 1\.8x fp32 served at 8 clients: ({NUMBER})x",
    ],
    "load": [
        rf"({NUMBER}) requests in ({NUMBER}) s: ({NUMBER}) requests/s",
        rf"latency ms, good: p50 ({NUMBER})\s+p95 ({NUMBER})\s+p99 ({NUMBER})",
        r"ok\s+every good answer equals in-process",
        r"ok\s+the server still runs",
    ],
    "short_runs": [
        rf"data 0 seed\s+42 epochs\s+1 [^\n]*test accuracy ({NUMBER}) balanced ({NUMBER}) AUROC ({NUMBER})",
        rf"\n\s+1\s+BN re-estimation yes, val_split random\s+1\s+({NUMBER}) ({NUMBER}) ({NUMBER})",
    ],
    "learning_spread": [  # one run in a child process with the kernel setting's environment, then the summary
        rf"train_cli\s+nativex1\s+seed 42\s+\{{\"best_val_acc\": ({NUMBER})\}}",
        rf"train_cli\s+best_val_acc\s+min ({NUMBER})\s+max ({NUMBER})\s+over 1 runs",
    ],
    "keras_throughput": [
        rf"custom_cnn\s+tensorflow\s+({NUMBER})\s+{NUMBER}-{NUMBER}\s+({NUMBER})\s+[\d,]+\s+1\.00x",
        rf"custom_cnn\s+torch\s+({NUMBER})\s+{NUMBER}-{NUMBER}\s+({NUMBER})\s+[\d,]+\s+({NUMBER})x",
    ],
}


def test_every_benchmark_is_checked() -> None:
    """A new script in benchmarks/ gets a quick run here too."""
    scripts = {path.stem for path in BENCHMARKS.glob("*.py") if not path.name.startswith("_")}
    assert scripts == set(FIGURES) | set(QUICK_RUN_ELSEWHERE)
    assert all((ROOT / test).is_file() for test in QUICK_RUN_ELSEWHERE.values())


def test_quick_sets_the_smallest_settings_and_given_options_win() -> None:
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCHMARKS / "_common.py")
    assert spec and spec.loader
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)

    def parse(*argv: str) -> dict[str, object]:
        parser = argparse.ArgumentParser()
        parser.add_argument("--steps", type=int, default=20)
        parser.add_argument("--model", default="tf_efficientnetv2_b2")
        return vars(common.parse_args(parser, list(argv), {"steps": 2, "model": "test_efficientnet"}))

    assert parse() == {"steps": 20, "model": "tf_efficientnetv2_b2", "quick": False}
    assert parse("--quick") == {"steps": 2, "model": "test_efficientnet", "quick": True}
    assert parse("--steps", "5", "--quick") == {"steps": 5, "model": "test_efficientnet", "quick": True}


def run_quick(name: str) -> str:
    """``python benchmarks/NAME.py --quick`` from the repository root: its output; fails on a non-zero exit."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"benchmarks/{name}.py --quick exited {result.returncode}:\n{output[-5000:]}"
    return result.stdout


def assert_figures(name: str, stdout: str) -> None:
    """Every line :data:`FIGURES` names is printed, and its figures are finite numbers."""
    for pattern in FIGURES[name]:
        match = re.search(pattern, stdout)
        assert match, f"benchmarks/{name}.py printed no line matching {pattern!r}:\n{stdout[-3000:]}"
        figures = [float(group) for group in match.groups()]
        assert all(figure == figure and abs(figure) != float("inf") for figure in figures), match.group(0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["fusion", "train_throughput", "quantize", "serve", "load", "short_runs", "learning_spread"]
)
def test_quick_benchmark_runs_and_prints_its_figures(name: str) -> None:
    assert_figures(name, run_quick(name))


@pytest.mark.slow
@pytest.mark.keras
def test_quick_keras_benchmark_runs_and_prints_its_figures() -> None:
    if importlib.util.find_spec("keras") is None:
        pytest.skip("benchmarks/keras_throughput.py needs the keras extra: pip install -e '.[keras]'")
    assert_figures("keras_throughput", run_quick("keras_throughput"))
