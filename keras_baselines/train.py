"""Train one baseline, test its best checkpoint and write ``predictions.csv`` + ``metrics.json``.

A run directory (default ``runs/keras/<model>``) holds::

    checkpoints/best.keras   the epoch with the lowest val_loss (tested for predictions.csv)
    checkpoints/last.keras   the final completed epoch
    epochs/epoch_NNN.keras   SaveModel, one per epoch (models with SaveModel)
    history.csv              Keras CSVLogger, one row per epoch
    val_files.txt            the validation images (a catdog.data.splits file list)
    predictions.csv          test split: file (relative to the dataset root), label, P(dog)
    val_predictions.csv      validation split, same weights and format (what ``catdog calibrate`` fits on)
    metrics.json             computed from predictions.csv by catdog.metrics (framework "keras")
    run.json                 what was trained and how (read back by ``evaluate``)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras

from catdog import CLASSES, CatDogError
from catdog.data.splits import write_file_list
from catdog.metrics import (
    PREDICTIONS_FILENAME,
    VAL_PREDICTIONS_FILENAME,
    RunMetrics,
    run_metrics_from_predictions,
    write_metrics,
    write_predictions,
)
from keras_baselines import DEFAULT_BN_MOMENTUM, DEFAULT_BN_RECALIBRATION_BATCHES, DEFAULT_BN_RECALIBRATION_STEPS
from keras_baselines import data as data_lib
from keras_baselines.callbacks import BEST_CHECKPOINT, CHECKPOINTS_DIRNAME, make_callbacks
from keras_baselines.models import ModelSpec, build_model, dog_probability, get_spec

RUN_INFO = "run.json"
VAL_FILES = "val_files.txt"
#: Written instead of a run when ``--model all`` skips a model (its reason); removed when it trains.
SKIPPED = "skipped.json"


@dataclass
class TrainConfig:
    """Everything ``train`` needs; the CLI flags map one to one."""

    model: str
    data: str | Path
    out: str | Path
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    val_fraction: float = 0.15
    val_split: str = "random"
    seed: int = 42
    val_files: str | Path | None = None
    learning_rate: float | None = None
    bn_momentum: float = DEFAULT_BN_MOMENTUM
    bn_recalibration_batches: int = DEFAULT_BN_RECALIBRATION_BATCHES
    bn_recalibration_steps: int = DEFAULT_BN_RECALIBRATION_STEPS
    patience: int = 3
    min_delta: float = 0.0
    steps_per_epoch: int | None = None
    weights: str | Path | None = None
    offline: bool = False
    augment: bool = True
    run_eagerly: bool = False
    deterministic: bool = True
    verbose: int = 2


def _check_config(config: TrainConfig) -> None:
    for name in ("bn_recalibration_batches", "bn_recalibration_steps"):
        if getattr(config, name) < 0:
            flag = "--" + name.replace("_", "-")
            raise CatDogError(f"{flag} must be 0 or more, got {getattr(config, name)}")
    for name in ("image_size", "epochs", "batch_size"):
        if getattr(config, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise CatDogError(f"{flag} must be a positive integer, got {getattr(config, name)}")
    if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
        raise CatDogError(f"--steps-per-epoch must be a positive integer, got {config.steps_per_epoch}")


def predict_test(
    model: Any,
    test: Any,
    files: list[str],
    labels: list[int],
    run_dir: str | Path,
    filename: str = PREDICTIONS_FILENAME,
) -> Path:
    """Predict the unshuffled ``test`` pipeline and write ``<run_dir>/predictions.csv`` (file, label, P(dog));
    ``filename`` :data:`VAL_PREDICTIONS_FILENAME` for the validation pipeline.

    ``files[i]`` and ``labels[i]`` belong to the pipeline's i-th image.
    """
    p_dog = dog_probability(model.predict(test, verbose=0))
    if len(p_dog) != len(files):
        raise RuntimeError(f"{len(p_dog)} predictions for {len(files)} files")
    return write_predictions(files, labels, p_dog, run_dir, filename)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and the backend; with ``deterministic``, TensorFlow's ops too, so a seed gives one run.

    Without TensorFlow's op determinism its multi-threaded kernels sum in varying order: the same custom_cnn
    run (seed 42, 8 epochs at 32 px) gave balanced accuracies 0.79, 0.85 and 0.83 three times in one process,
    and 0.72 three times with it. (The torch backend is deterministic on the CPU as it is.)
    """
    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def train(config: TrainConfig) -> RunMetrics:
    """Train ``config.model``, test its best checkpoint on ``<data>/test`` and write the run directory."""
    _check_config(config)
    spec = get_spec(config.model)
    run_dir = Path(config.out)
    data_lib.check_dataset(config.data)
    seed_everything(config.seed, config.deterministic)
    model = build_model(
        spec.name,
        image_size=config.image_size,
        weights=config.weights,
        offline=config.offline,
        learning_rate=config.learning_rate,
        run_eagerly=config.run_eagerly,
        bn_momentum=config.bn_momentum,
    )
    splits = data_lib.load_splits(
        config.data,
        image_size=config.image_size,
        batch_size=config.batch_size,
        label_mode=spec.label_mode,
        val_fraction=config.val_fraction,
        val_split=config.val_split,
        seed=config.seed,
        augment=config.augment,
        val_files=config.val_files,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SKIPPED).unlink(missing_ok=True)
    write_file_list(splits.val_files, run_dir / VAL_FILES)
    epochs_run, train_seconds = _fit(model, spec, splits, run_dir, config)

    checkpoint = run_dir / CHECKPOINTS_DIRNAME / BEST_CHECKPOINT
    best = keras.saving.load_model(checkpoint)
    predictions = predict_test(best, splits.test, splits.test_files, splits.test_labels, run_dir)
    predict_test(best, splits.val, splits.val_files, splits.val_labels, run_dir, VAL_PREDICTIONS_FILENAME)
    info = _run_info(config, spec, splits, epochs_run, train_seconds, checkpoint)
    (run_dir / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    metrics = run_metrics_from_predictions(
        predictions,
        model=spec.name,
        framework="keras",
        pretrained=spec.pretrained,
        num_params=int(model.count_params()),
        epochs=epochs_run,
        train_seconds=train_seconds,
        checkpoint=str(checkpoint),
    )
    write_metrics(metrics, run_dir)
    return metrics


def _fit(model: Any, spec: ModelSpec, splits: data_lib.Splits, run_dir: Path, config: TrainConfig) -> tuple[int, float]:
    """``model.fit`` with the run's callbacks (checkpoints, history, early stopping): (epochs run, seconds)."""
    callbacks = make_callbacks(
        spec,
        run_dir,
        patience=config.patience,
        min_delta=config.min_delta,
        train=splits.train,
        bn_recalibration_batches=config.bn_recalibration_batches,
        bn_recalibration_steps=config.bn_recalibration_steps,
    )
    start = time.perf_counter()
    history = model.fit(
        splits.train,
        validation_data=splits.val,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=callbacks,
        shuffle=False,  # the training pipeline shuffles
        verbose=config.verbose,
    )
    return len(history.history.get("loss", [])), round(time.perf_counter() - start, 3)


def _run_info(
    config: TrainConfig,
    spec: ModelSpec,
    splits: data_lib.Splits,
    epochs_run: int,
    train_seconds: float,
    checkpoint: Path,
) -> dict[str, Any]:
    """What ``run.json`` records: what was trained, on what, for how long, and the checkpoint tested."""
    return {
        "model": spec.name,
        "pretrained": spec.pretrained,
        "epochs": epochs_run,
        "train_seconds": train_seconds,
        "backend": keras.backend.backend(),
        "class_names": list(CLASSES),
        "train_images": splits.train_count,
        "val_images": splits.val_count,
        "test_images": len(splits.test_files),
        "val_files": VAL_FILES,
        "checkpoint": str(checkpoint),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }


def _find_run_info(model_path: Path) -> tuple[Path, dict[str, Any]] | None:
    for folder in (model_path.parent, model_path.parent.parent):
        path = folder / RUN_INFO
        if path.is_file():
            return folder, json.loads(path.read_text())
    return None


def evaluation_dir(model_path: str | Path, out: str | Path | None = None) -> Path:
    """Where ``evaluate`` writes: ``out``, else the run directory of ``model_path``, else its folder."""
    if out is not None:
        return Path(out)
    found = _find_run_info(Path(model_path))
    return found[0] if found else Path(model_path).parent


def evaluate(
    model_path: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    batch_size: int = 32,
    name: str | None = None,
) -> RunMetrics:
    """Evaluate a saved ``.keras`` model on ``<data>/test``: write ``predictions.csv`` and ``metrics.json``.

    The model name, epochs and training time come from the ``run.json`` of its run directory (the
    model's folder or the one above it) when there is one. ``out`` (both files) defaults to that run directory,
    else to the model's folder.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise CatDogError(f"--model-path {model_path}: file not found; train one with `train --model NAME`")
    if model_path.suffix != ".keras":
        raise CatDogError(f"--model-path {model_path}: expected a .keras file saved by `train`")
    if batch_size < 1:
        raise CatDogError(f"--batch-size must be a positive integer, got {batch_size}")
    data_lib.check_dataset(data, splits=("test",))
    found = _find_run_info(model_path)
    info = found[1] if found else {}
    model = keras.saving.load_model(model_path)
    image_size = int(model.input_shape[1])
    test, files, labels = data_lib.load_test(data, image_size=image_size, batch_size=batch_size)
    out_dir = evaluation_dir(model_path, out)
    predictions = predict_test(model, test, files, labels, out_dir)
    metrics = run_metrics_from_predictions(
        predictions,
        model=name or info.get("model") or model.name,
        framework="keras",
        pretrained=bool(info.get("pretrained", False)),
        num_params=int(model.count_params()),
        epochs=int(info.get("epochs", 0)),
        train_seconds=float(info.get("train_seconds", 0.0)),
        checkpoint=str(model_path),
    )
    write_metrics(metrics, out_dir)
    return metrics
