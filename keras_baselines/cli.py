"""``python -m keras_baselines {train,evaluate}``.

Arguments are parsed first; then ``--backend`` is set in ``KERAS_BACKEND`` and only then is keras
imported (the training modules import it at module level).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from catdog import CatDogError
from catdog.data.splits import VAL_SPLITS
from keras_baselines import (
    BACKENDS,
    DEFAULT_BN_MOMENTUM,
    DEFAULT_BN_RECALIBRATION_BATCHES,
    DEFAULT_BN_RECALIBRATION_STEPS,
    DEFAULT_OUT,
    MODEL_NAMES,
    use_backend,
)


def _default_backend() -> str:
    env = os.environ.get("KERAS_BACKEND")
    return env if env in BACKENDS else BACKENDS[0]


def build_parser() -> argparse.ArgumentParser:
    """The ``keras_baselines`` argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--backend",
        choices=BACKENDS,
        default=_default_backend(),
        help="Keras backend (default: $KERAS_BACKEND if supported, else tensorflow)",
    )
    common.add_argument("--batch-size", type=int, default=32)

    parser = argparse.ArgumentParser(
        prog="python -m keras_baselines",
        description="Train and evaluate the four Keras baselines on the fused cat/dog dataset.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_options(sub.add_parser("train", parents=[common], help="train, test and write metrics.json"))
    evaluate = sub.add_parser("evaluate", parents=[common], help="evaluate a saved .keras model on test/")
    evaluate.add_argument("--model-path", required=True, type=Path, help="a .keras file written by train")
    evaluate.add_argument("--data", required=True, type=Path, help="fused dataset with test/")
    evaluate.add_argument(
        "--out", type=Path, default=None, help="where predictions.csv and metrics.json go (default: the run directory)"
    )
    evaluate.add_argument("--name", default=None, help="model name in metrics.json (default: from run.json)")
    return parser


def _add_train_options(train: argparse.ArgumentParser) -> None:
    """``train``'s options: data, run length, validation, BatchNorm policy, early stopping, weights."""
    train.add_argument("--model", required=True, choices=(*MODEL_NAMES, "all"), help="model, or all four")
    train.add_argument("--data", required=True, type=Path, help="fused dataset with train/ and test/")
    train.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"run directory (default {DEFAULT_OUT}/<model>); with --model all, the parent of the four",
    )
    train.add_argument("--image-size", type=int, default=224)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument(
        "--val-files",
        type=Path,
        default=None,
        help="validation images: a file list (one path per line, "
        "relative to --data, e.g. train/cat/cat.12.jpg); default: a stratified --val-fraction of train/",
    )
    train.add_argument("--val-fraction", type=float, default=0.15, help="of each class of train/, seeded split")
    train.add_argument(
        "--val-split",
        choices=VAL_SPLITS,
        default="random",
        help="random (stratified by class) or breed (whole dog breeds validate, as they test; needs the "
        "dataset's manifest.csv)",
    )
    train.add_argument("--seed", type=int, default=42)
    train.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorFlow's op determinism, so that a seed gives one run (default; --no-deterministic: off)",
    )
    train.add_argument("--learning-rate", type=float, default=None, help="default: per model")
    train.add_argument(
        "--bn-momentum",
        type=float,
        default=DEFAULT_BN_MOMENTUM,
        help="BatchNorm momentum in torch convention, set on every BatchNormalization layer (Keras momentum "
        f"1 - this; default {DEFAULT_BN_MOMENTUM})",
    )
    train.add_argument(
        "--bn-recalibration-batches",
        type=int,
        default=DEFAULT_BN_RECALIBRATION_BATCHES,
        help="before each validation, re-estimate the BatchNorm statistics on this many training batches (0: never)",
    )
    train.add_argument(
        "--bn-recalibration-steps",
        type=int,
        default=DEFAULT_BN_RECALIBRATION_STEPS,
        help="... only while fewer optimizer steps than this have run",
    )
    train.add_argument("--patience", type=int, default=3, help="early stopping patience (epochs)")
    train.add_argument("--min-delta", type=float, default=0.0, help="early stopping minimum improvement")
    train.add_argument("--steps-per-epoch", type=int, default=None, help="cap batches per epoch (smoke runs)")
    train.add_argument(
        "--weights", type=Path, default=None, help="effnetv2b2_imagenet: local .weights.h5/.h5 of the no-top base"
    )
    train.add_argument("--offline", action="store_true", help="never download weights")
    train.add_argument("--no-augment", dest="augment", action="store_false", help="disable augmentation")
    train.add_argument("--eager", action="store_true", help="run eagerly, no graph compilation (smoke runs)")
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")


def _summary(metrics) -> str:
    return (
        f"{metrics.model}: accuracy {metrics.accuracy:.4f}  balanced accuracy {metrics.balanced_accuracy:.4f}  "
        f"f1 {metrics.f1:.4f}  auroc {_number(metrics.auroc)}  epochs {metrics.epochs}  {metrics.train_seconds:.1f}s"
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _report(metrics, run_dir: Path) -> None:
    """Print the summary line, the collapse warning if the predictions show one, and where metrics went."""
    from catdog.metrics import PREDICTIONS_FILENAME, read_predictions

    print(_summary(metrics))
    scores = read_predictions(run_dir / PREDICTIONS_FILENAME).score()
    if scores.collapse_warning():  # then name the cause the model can have: count its BatchNorm layers
        from keras_baselines.models import batch_norm_layers, get_spec

        try:
            layers: int | None = len(batch_norm_layers(get_spec(metrics.model).build(32, None)))
        except CatDogError:  # not one of ours: say both causes
            layers = None
        print(f"  warning: {scores.collapse_warning(layers)}")
    print(f"  -> {run_dir / 'metrics.json'}")


def run(args: argparse.Namespace) -> int:
    """Execute parsed arguments (keras is imported here, after the backend is set)."""
    use_backend(args.backend)
    from keras_baselines import train as train_lib

    if args.command == "evaluate":
        metrics = train_lib.evaluate(
            args.model_path, args.data, out=args.out, batch_size=args.batch_size, name=args.name
        )
        _report(metrics, train_lib.evaluation_dir(args.model_path, args.out))
        return 0
    return train_models(args, train_lib)


def _plan(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, str]]:
    """The run directory of each model to train, and the reason of each ``--model all`` skips.

    Checked before any training: a missing dataset, validation list or ImageNet file should not surface
    after hours. With ``--model all`` a model without its ImageNet weights is skipped, not fatal.
    """
    from catdog.data.splits import split_train
    from keras_baselines.data import check_dataset
    from keras_baselines.models import resolve_imagenet_weights

    names = MODEL_NAMES if args.model == "all" else (args.model,)
    if args.weights is not None and "effnetv2b2_imagenet" not in names:
        raise CatDogError(f"--weights applies to effnetv2b2_imagenet only, not {args.model}")
    check_dataset(args.data)
    if args.val_files is not None:
        split_train(args.data, val_files=args.val_files)  # every listed file must be an image of train/
    parent = Path(DEFAULT_OUT) if args.out is None else args.out
    runs = {name: args.out if args.out is not None and args.model != "all" else parent / name for name in names}
    skipped: dict[str, str] = {}
    if "effnetv2b2_imagenet" in names:
        try:
            resolve_imagenet_weights(args.weights, offline=args.offline)
        except CatDogError as err:
            if args.model != "all":
                raise
            skipped["effnetv2b2_imagenet"] = str(err)
    return runs, skipped


def train_models(args: argparse.Namespace, train_lib) -> int:
    """Train each planned model in turn; 0 when all trained (skips aside), 1 when one failed."""
    runs, skipped = _plan(args)
    failed: list[str] = []
    for name, out in runs.items():
        if name in skipped:
            out.mkdir(parents=True, exist_ok=True)
            (out / train_lib.SKIPPED).write_text(json.dumps({"model": name, "reason": skipped[name]}, indent=2) + "\n")
            print(f"{name}: skipped: {skipped[name]}")
            print(f"  -> {out / train_lib.SKIPPED}")
            continue
        config = _train_config(args, name, out, train_lib)
        if len(runs) == 1:
            _report(train_lib.train(config), out)
            continue
        try:
            _report(train_lib.train(config), out)
        except Exception as err:  # --model all: report it, train the others, exit non-zero at the end
            failed.append(name)
            if not isinstance(err, CatDogError):
                traceback.print_exc()
            print(f"{name}: failed: {type(err).__name__}: {err}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} model(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _train_config(args: argparse.Namespace, name: str, out: Path, train_lib):
    """The ``TrainConfig`` of model ``name`` from the command line."""
    return train_lib.TrainConfig(
        model=name,
        data=args.data,
        out=out,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        val_split=args.val_split,
        seed=args.seed,
        val_files=args.val_files,
        learning_rate=args.learning_rate,
        bn_momentum=args.bn_momentum,
        bn_recalibration_batches=args.bn_recalibration_batches,
        bn_recalibration_steps=args.bn_recalibration_steps,
        patience=args.patience,
        min_delta=args.min_delta,
        steps_per_epoch=args.steps_per_epoch,
        weights=args.weights if name == "effnetv2b2_imagenet" else None,
        offline=args.offline,
        augment=args.augment,
        run_eagerly=args.eager,
        deterministic=args.deterministic,
        verbose=0 if args.quiet else 2,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except CatDogError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
