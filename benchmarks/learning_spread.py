"""What the tests' short training runs reach on other CPUs: each run over seeds x CPU kernel settings.

    python benchmarks/learning_spread.py demo32 short_runs --seeds 42 1 --kernels avx512x2 avx512x1 avx2x1 sse41x1

A seeded CPU run is reproducible only on the same kernels: another instruction set or thread count sums in
another order and a short run on a few hundred images ends elsewhere. Each scenario below is the run of a test
(or of ``catdog demo``) with the training seed ``--seeds``; each kernel setting ``<isa>x<threads>`` runs it in a
fresh process whose environment (:func:`catdog.utils.cpu_kernel_env`) limits oneDNN, ATen and MKL to that
instruction set and thread count, as ``pytest --cpu-isa ISA --threads N`` does for the tests. Printed: one
line per run with its figures, then each figure's minimum and maximum: the tests' thresholds sit below the
minimum. ``--quick`` runs the smallest form (32 px, 1 epoch, one seed, the machine's own kernels; train_cli
alone unless scenarios are named). A run that fails prints its error and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _fused(root: Path, *, cats: int, dogs_per_breed: int, breeds: int, size: int, seed: int, cat_train: int,
           cat_test: int, split_seed: int = 42) -> Path:  # fmt: skip
    from catdog.data.fusion import fuse
    from catdog.data.sample_data import generate

    sources = generate(root / "kaggle", cats=cats, dogs_per_breed=dogs_per_breed, breeds=breeds, size=size, seed=seed)
    fuse(sources.cats_source, sources.dogs_source, root / "dataset", cat_train=cat_train, cat_test=cat_test,
         seed=split_seed, progress=False)  # fmt: skip
    return root / "dataset"


def demo(root: Path, seed: int, size: int, epochs: int) -> dict[str, float]:
    """``catdog demo`` without pretrained weights: the scratch model's test scores and posted answers."""
    from catdog.demo import main

    os.environ.pop("CATDOG_PRETRAINED_FILE", None)
    workdir = root / "demo-run"
    args = ["--workdir", str(workdir), "--image-size", str(size), "--epochs", str(epochs), "--train-seed", str(seed)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    metrics = json.loads((workdir / "runs" / "scratch" / "metrics.json").read_text())
    answers = json.loads((workdir / "answers.json").read_text())
    return {"accuracy": metrics["accuracy"], "balanced": metrics["balanced_accuracy"], "auroc": metrics["auroc"],
            "posted_right": sum(a["right"] for a in answers),
            "agree": sum(a["agrees_with_onnx_file"] for a in answers)}  # fmt: skip


def short_runs(root: Path, seed: int, size: int, epochs: int) -> dict[str, float]:
    """tests/test_short_runs.py: 3 epochs at 64 px, batch 32, with and without the BatchNorm re-estimation."""
    from catdog.training.cli import main

    data = _fused(root, cats=100, dogs_per_breed=20, breeds=9, size=64, seed=0, cat_train=60, cat_test=40)
    out: dict[str, float] = {}
    for name, extra in (("", []), ("no_bn_", ["--model.bn_recalibration_batches", "0"])):
        run = root / f"run{name}"
        options = _fit_options(data, run, seed, size, epochs, "--data.batch_size", "32", *extra)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["fit", *options]) == 0 and main(["test", *options, "--ckpt_path", "best"]) == 0
        metrics = json.loads((run / "metrics.json").read_text())
        out |= {f"{name}test_balanced": metrics["balanced_accuracy"], f"{name}test_auroc": metrics["auroc"]}
        out[f"{name}best_val_acc"] = max(_logged(run, "val_acc"))
    return out


def train_cli(root: Path, seed: int, size: int, epochs: int) -> dict[str, float]:
    """tests/test_train_cli.py::test_scratch_training_learns: 48 px, 4 epochs, the best validation accuracy."""
    from catdog.training.cli import main

    data = _fused(root, cats=300, dogs_per_breed=30, breeds=10, size=64, seed=1, cat_train=240, cat_test=60,
                  split_seed=1)  # fmt: skip
    options = _fit_options(data, root / "run", seed, size, epochs)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["fit", *options]) == 0
    return {"best_val_acc": max(_logged(root / "run", "val_acc"))}


def poutyne(root: Path, seed: int, size: int, epochs: int) -> dict[str, float]:
    """tests/test_poutyne.py::test_a_short_run_learns_both_classes: the demo's data, 64 px, batch 32, 3 epochs."""
    from catdog.poutyne.trainer import train_poutyne

    data = _fused(root, cats=200, dogs_per_breed=20, breeds=10, size=64, seed=0, cat_train=144, cat_test=56)
    args = ["-c", str(CONFIGS / "scratch.yaml"), "-c", str(CONFIGS / "logger" / "csv.yaml"), "-c",
            str(CONFIGS / "poutyne.yaml"), "--seed_everything", str(seed), "--data.data_dir", str(data),
            "--data.image_size", str(size), "--data.batch_size", "32", "--data.num_workers", "0",
            "--trainer.max_epochs", str(epochs), "--trainer.accelerator", "cpu", "--poutyne.run_dir",
            str(root / "run"), "--poutyne.wandb", "false", "--poutyne.verbose", "false"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run = train_poutyne(args)
    return {"accuracy": run.metrics.accuracy, "balanced": run.metrics.balanced_accuracy}


def keras(root: Path, seed: int, size: int, epochs: int) -> dict[str, float]:
    """tests/test_keras_baselines.py::test_a_short_run_learns_both_classes: custom_cnn, 32 px, 12 epochs."""
    from catdog.metrics import read_predictions
    from keras_baselines.cli import main

    data = _fused(root, cats=120, dogs_per_breed=12, breeds=8, size=64, seed=0, cat_train=84, cat_test=36)
    out = root / "custom_cnn"
    argv = ["train", "--model", "custom_cnn", "--data", str(data), "--out", str(out), "--image-size", str(size),
            "--epochs", str(epochs), "--batch-size", "16", "--seed", str(seed), "--eager", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    scores = read_predictions(out / "predictions.csv").score()
    return {"balanced": scores.balanced_accuracy, "auroc": scores.auroc}


def _fit_options(data: Path, run: Path, seed: int, size: int, epochs: int, *extra: str) -> list[str]:
    return ["-c", str(CONFIGS / "scratch.yaml"), "-c", str(CONFIGS / "logger" / "csv.yaml"), "--seed_everything",
            str(seed), "--data.data_dir", str(data), "--data.image_size", str(size), "--data.num_workers", "0",
            "--trainer.default_root_dir", str(run), "--trainer.max_epochs", str(epochs), "--trainer.accelerator",
            "cpu", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            *extra]  # fmt: skip


def _logged(run: Path, key: str) -> list[float]:
    import csv

    rows = [row for path in run.glob("lightning_logs/version_*/metrics.csv") for row in csv.DictReader(path.open())]
    return [float(row[key]) for row in rows if row.get(key)]


#: scenario -> (function, image size, epochs)
SCENARIOS = {
    "demo32": (demo, 32, 3),
    "demo64": (demo, 64, 3),
    "short_runs": (short_runs, 64, 3),
    "train_cli": (train_cli, 48, 4),
    "poutyne": (poutyne, 64, 3),
    "keras": (keras, 32, 12),
}


def run_one(scenario: str, kernel: str, seed: int, quick: bool) -> dict[str, float]:
    """One scenario in a fresh process with the kernel setting's environment."""
    from catdog.utils import cpu_kernel_env

    isa, _, threads = kernel.rpartition("x")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    env |= cpu_kernel_env(None if isa == "native" else isa.upper().replace("AVX512", "AVX512_CORE"), int(threads))
    command = [sys.executable, __file__, "--child", scenario, "--seeds", str(seed)] + (["--quick"] if quick else [])
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        return {"error": result.stderr[-1500:]}  # type: ignore[dict-item]
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--kernels", nargs="+", default=["avx512x2", "avx512x1", "avx2x1", "sse41x1"],
                        help="<isa>x<threads>, isa one of avx512, avx2, sse41, native")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--quick", action="store_true", help="32 px, 1 epoch, one seed, native kernels")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.scenarios = args.scenarios or (["train_cli"] if args.quick else list(SCENARIOS))
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenario(s) {sorted(unknown)}: choose from {', '.join(SCENARIOS)}")
    if args.child:
        function, size, epochs = SCENARIOS[args.child]
        with tempfile.TemporaryDirectory() as tmp:
            figures = function(Path(tmp), args.seeds[0], 32 if args.quick else size, 1 if args.quick else epochs)
        print(json.dumps(figures))
        return 0
    kernels = ["nativex1"] if args.quick else args.kernels
    seeds = args.seeds[:1] if args.quick else args.seeds
    jobs = [(s, k, seed) for s in args.scenarios for seed in seeds for k in kernels]
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for (scenario, kernel, seed), figures in pool.map(lambda job: (job, run_one(*job, args.quick)), jobs):
            print(f"{scenario:<11} {kernel:<9} seed {seed:<3} {json.dumps(figures)}", flush=True)
            results.append(((scenario, kernel, seed), figures))
    for scenario in args.scenarios:
        rows = [f for (s, _, _), f in results if s == scenario and "error" not in f]
        for key in rows[0] if rows else []:
            values = [row[key] for row in rows]
            print(f"{scenario:<11} {key:<18} min {min(values):.3f}  max {max(values):.3f}  over {len(values)} runs")
    failed = [job for job, figures in results if "error" in figures]
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
