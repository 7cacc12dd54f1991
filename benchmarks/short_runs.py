"""How much a short run from scratch learns on small data: test scores over datasets and seeds, per run length.

    python benchmarks/short_runs.py --epochs 3 10 --data-seeds 0 1 2 3 --seeds 42 1

Each dataset is the first try of a new user: ``catdog sample-data`` with 100 cats and 9 breeds of 20 dogs
(seed ``--data-seeds``), fused with 60 training and 40 test cats, which puts 5 breeds in train/ and 4 unseen
breeds in test/ (~136 training, 24 validation, 120 test images). Every run is ``catdog fit -c scratch`` at
``--image-size`` and ``--batch-size`` for each ``--epochs``, then ``catdog test --ckpt_path best``; the
figures are read back from the run's ``metrics.json`` (computed from its saved predictions), so they are the
numbers a user gets. ``--no-recalibration`` adds the same runs without the BatchNorm re-estimation
(``--model.bn_recalibration_batches 0``), the policy's control.

Printed: one line per run, then per (epochs, policy) the mean / min / max test accuracy, balanced accuracy
and AUROC over the runs, and how many runs reach accuracy and balanced accuracy >= ``--target``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from catdog.fusion import fuse
from catdog.metrics import RunMetrics, read_metrics
from catdog.sample_data import generate
from catdog.train import main as catdog_main


@dataclass(frozen=True)
class Result:
    epochs: int
    recalibration: bool
    data_seed: int
    seed: int
    metrics: RunMetrics


def first_try_dataset(root: Path, data_seed: int) -> Path:
    """The generated, fused dataset of one data seed under ``root``."""
    sources = generate(root / "kaggle", cats=100, dogs_per_breed=20, breeds=9, size=64, seed=data_seed)
    fuse(sources.cats_source, sources.dogs_source, root / "dataset", cat_train=60, cat_test=40, seed=42, progress=False)
    return root / "dataset"


def fit_and_test(
    data: Path, run_dir: Path, args: argparse.Namespace, epochs: int, seed: int, recalibration: bool
) -> RunMetrics:
    """``catdog fit`` then ``catdog test --ckpt_path best`` as a user runs them; the test's metrics.json."""
    options = [
        "-c", "scratch", "-c", "logger/csv",
        "--seed_everything", str(seed), "--data.data_dir", str(data), "--data.image_size", str(args.image_size),
        "--data.batch_size", str(args.batch_size), "--data.num_workers", "0", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", str(epochs),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        *([] if recalibration else ["--model.bn_recalibration_batches", "0"]),
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for command in (["fit", *options], ["test", *options, "--ckpt_path", "best"]):
            if catdog_main(command) != 0:
                raise SystemExit(f"catdog {command[0]} failed for {run_dir}")
    return read_metrics(run_dir / "metrics.json")


def describe(result: Result) -> str:
    m = result.metrics
    return (
        f"data {result.data_seed} seed {result.seed:>3} epochs {result.epochs:>2} BN re-estimation "
        f"{'yes' if result.recalibration else 'no ':3}: accuracy {m.accuracy:.3f} balanced {m.balanced_accuracy:.3f} "
        f"AUROC {m.auroc:.3f} confusion {m.confusion_matrix}"
    )


def summarise(results: list[Result], target: float) -> None:
    heads = "  ".join(f"{name:^17}" for name in ("accuracy", "balanced", "AUROC"))
    print(f"\n{'epochs':>6} {'BN re-est.':>10} {'runs':>4}  {heads}  >= {target}")
    print(f"{'':>6} {'':>10} {'':>4}  {'mean  min   max':^17}  {'mean  min   max':^17}  {'mean  min   max':^17}")
    for key in sorted({(r.epochs, r.recalibration) for r in results}):
        group = [r.metrics for r in results if (r.epochs, r.recalibration) == key]
        columns = [[m.accuracy for m in group], [m.balanced_accuracy or 0.0 for m in group]]
        columns.append([m.auroc or 0.0 for m in group])
        figures = "  ".join(f"{statistics.mean(c):.2f} {min(c):.2f} {max(c):.2f}" for c in columns)
        reached = sum(m.accuracy >= target and (m.balanced_accuracy or 0.0) >= target for m in group)
        print(f"{key[0]:>6} {'yes' if key[1] else 'no':>10} {len(group):>4}  {figures}  {reached}/{len(group)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1], help="training seeds (seed_everything)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-recalibration", action="store_true", help="also run without BatchNorm re-estimation")
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()

    import torch

    for name in ("lightning.pytorch", "lightning.fabric"):  # one line per run is printed here instead
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    print(f"tf_efficientnetv2_b2 from scratch, {args.image_size} px, batch {args.batch_size}, {args.threads} threads")
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for data_seed in args.data_seeds:
            data = first_try_dataset(Path(tmp) / f"data{data_seed}", data_seed)
            for epochs in args.epochs:
                for recalibration in (True, False) if args.no_recalibration else (True,):
                    for seed in args.seeds:
                        run_dir = Path(tmp) / f"run_{data_seed}_{epochs}_{seed}_{int(recalibration)}"
                        metrics = fit_and_test(data, run_dir, args, epochs, seed, recalibration)
                        results.append(Result(epochs, recalibration, data_seed, seed, metrics))
                        print(describe(results[-1]), flush=True)
    summarise(results, args.target)


if __name__ == "__main__":
    main()
