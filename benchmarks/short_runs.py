"""How much a short run from scratch learns on small data: test scores over datasets and seeds, per run length.

    python benchmarks/short_runs.py --epochs 3 10 --data-seeds 0 1 2 3 --seeds 42 1 [--val-split random breed]
    python benchmarks/short_runs.py --quick      # one 1-epoch run of a tiny model: checks that it runs

Each dataset is the first try of a new user: ``catdog sample-data`` with 100 cats and 9 breeds of 20 dogs
(seed ``--data-seeds``), fused with 60 training and 40 test cats, which puts 5 breeds in train/ and 4 unseen
breeds in test/ (~136 training, 24 validation, 120 test images). Every run is ``catdog fit -c scratch`` at
``--image-size`` and ``--batch-size`` for each ``--epochs``, then ``catdog test --ckpt_path best``; the test
figures are read back from the run's ``metrics.json`` (computed from its saved predictions), so they are the
numbers a user gets, and the validation accuracy is the logged one of the epoch ``best.ckpt`` holds.
``--no-recalibration`` adds the same runs without the BatchNorm re-estimation
(``--model.bn_recalibration_batches 0``), the policy's control; ``--val-split random breed`` runs each
validation split (``data.val_split``: breed holds out whole dog breeds, as test does).

Printed: one line per run, then per (epochs, variant) the mean / min / max test accuracy, balanced accuracy
and AUROC over the runs, the mean validation accuracy and how many runs reach accuracy and balanced accuracy
>= ``--target``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _common import parse_args

from catdog.data.fusion import fuse
from catdog.data.sample_data import generate
from catdog.metrics import RunMetrics, read_metrics
from catdog.training.cli import main as catdog_main

#: ``--quick``: one run of one epoch of a tiny timm test model at 32 px.
QUICK = dict(epochs=[1], data_seeds=[0], seeds=[42], model="test_efficientnet", image_size=32, batch_size=16)


@dataclass(frozen=True)
class Variant:
    recalibration: bool
    val_split: str

    def __str__(self) -> str:
        return f"BN re-estimation {'yes' if self.recalibration else 'no'}, val_split {self.val_split}"


@dataclass(frozen=True)
class Result:
    epochs: int
    variant: Variant
    data_seed: int
    seed: int
    metrics: RunMetrics
    val_accuracy: float


def first_try_dataset(root: Path, data_seed: int) -> Path:
    """The generated, fused dataset of one data seed under ``root``."""
    sources = generate(root / "kaggle", cats=100, dogs_per_breed=20, breeds=9, size=64, seed=data_seed)
    fuse(sources.cats_source, sources.dogs_source, root / "dataset", cat_train=60, cat_test=40, seed=42, progress=False)
    return root / "dataset"


def fit_and_test(
    data: Path, run_dir: Path, args: argparse.Namespace, epochs: int, seed: int, variant: Variant
) -> tuple[RunMetrics, float]:
    """``catdog fit`` then ``catdog test --ckpt_path best`` as a user runs them: the test's metrics.json and the
    validation accuracy of the best epoch (lowest val_loss, the epoch ``best.ckpt`` holds)."""
    options = [
        "-c", "scratch", "-c", "logger/csv", "--model.model_name", args.model,
        "--seed_everything", str(seed), "--data.data_dir", str(data), "--data.image_size", str(args.image_size),
        "--data.batch_size", str(args.batch_size), "--data.val_split", variant.val_split,
        "--data.num_workers", "0", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", str(epochs),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        *([] if variant.recalibration else ["--model.bn_recalibration_batches", "0"]),
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for command in (["fit", *options], ["test", *options, "--ckpt_path", "best"]):
            if catdog_main(command) != 0:
                raise SystemExit(f"catdog {command[0]} failed for {run_dir}")
    return read_metrics(run_dir / "metrics.json"), best_epoch_val_accuracy(run_dir)


def best_epoch_val_accuracy(run_dir: Path) -> float:
    """``val_acc`` of the epoch with the lowest ``val_loss`` in the fit's CSV log (the first such epoch)."""
    rows = []
    for path in sorted(run_dir.glob("lightning_logs/version_*/metrics.csv")):
        with path.open(newline="") as handle:
            rows += [row for row in csv.DictReader(handle) if row.get("val_loss")]
    best = min(rows, key=lambda row: (float(row["val_loss"]), int(row["epoch"])))
    return float(best["val_acc"])


def describe(result: Result) -> str:
    m = result.metrics
    return (
        f"data {result.data_seed} seed {result.seed:>3} epochs {result.epochs:>2} {result.variant}: test accuracy "
        f"{m.accuracy:.3f} balanced {m.balanced_accuracy:.3f} AUROC {m.auroc:.3f} confusion {m.confusion_matrix}; "
        f"validation accuracy {result.val_accuracy:.3f}"
    )


def summarise(results: list[Result], target: float) -> None:
    heads = "  ".join(f"{name:^17}" for name in ("test accuracy", "balanced", "AUROC"))
    print(f"\n{'epochs':>6}  {'variant':<42} {'runs':>4}  {heads}  {'val acc':>7}  >= {target}")
    print(f"{'':>6}  {'':<42} {'':>4}  " + "  ".join(["mean  min   max "] * 3))
    for epochs, variant in sorted({(r.epochs, r.variant) for r in results}, key=lambda k: (k[0], str(k[1]))):
        group = [r for r in results if (r.epochs, r.variant) == (epochs, variant)]
        metrics = [r.metrics for r in group]
        columns = [[m.accuracy for m in metrics], [m.balanced_accuracy or 0.0 for m in metrics]]
        columns.append([m.auroc or 0.0 for m in metrics])
        figures = "  ".join(f"{statistics.mean(c):.2f} {min(c):.2f} {max(c):.2f}" for c in columns)
        reached = sum(m.accuracy >= target and (m.balanced_accuracy or 0.0) >= target for m in metrics)
        val = statistics.mean(r.val_accuracy for r in group)
        print(f"{epochs:>6}  {str(variant):<42} {len(group):>4}  {figures}  {val:>7.2f}  {reached}/{len(group)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1], help="training seeds (seed_everything)")
    parser.add_argument("--model", default="tf_efficientnetv2_b2", help="timm model trained from scratch")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-recalibration", action="store_true", help="also run without BatchNorm re-estimation")
    parser.add_argument("--val-split", nargs="+", choices=("random", "breed"), default=["random"])
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parse_args(parser, argv, QUICK)

    import torch

    for name in ("lightning.pytorch", "lightning.fabric"):  # one line per run is printed here instead
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    print(f"{args.model} from scratch, {args.image_size} px, batch {args.batch_size}, {args.threads} threads")
    variants = [
        Variant(recalibration, val_split)
        for recalibration in ((True, False) if args.no_recalibration else (True,))
        for val_split in args.val_split
    ]
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for data_seed in args.data_seeds:
            data = first_try_dataset(Path(tmp) / f"data{data_seed}", data_seed)
            for epochs in args.epochs:
                for index, variant in enumerate(variants):
                    for seed in args.seeds:
                        run_dir = Path(tmp) / f"run_{data_seed}_{epochs}_{seed}_{index}"
                        metrics, val_accuracy = fit_and_test(data, run_dir, args, epochs, seed, variant)
                        results.append(Result(epochs, variant, data_seed, seed, metrics, val_accuracy))
                        print(describe(results[-1]), flush=True)
    summarise(results, args.target)


if __name__ == "__main__":
    main()
