"""Train one baseline, evaluate it on the test split and write ``metrics.json`` + ``history.csv``.

A run directory (default ``runs/keras/<model>``) holds::

    model.keras              the model at the end of training (best weights when early stopping)
    epochs/epoch_NNN.keras   SaveModel, one per epoch (models with SaveModel)
    checkpoints/best.keras   best by val_accuracy (models with checkpoints)
    history.csv              Keras CSVLogger, one row per epoch
    run.json                 what was trained and how (read back by ``evaluate``)
    metrics.json             the shared schema of :mod:`catdog.metrics` (framework "keras")
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from catdog import CLASSES, CatDogError
from catdog.metrics import RunMetrics, binary_confusion_matrix, write_metrics
from keras_baselines import data as data_lib
from keras_baselines.callbacks import BEST_CHECKPOINT, CHECKPOINTS_DIRNAME, make_callbacks
from keras_baselines.models import build_model, dog_probability, get_spec

FINAL_MODEL = "model.keras"
RUN_INFO = "run.json"


@dataclass
class TrainConfig:
    """Everything ``train`` needs; the CLI flags map one to one."""

    model: str
    data: str | Path
    out: str | Path
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    val_fraction: float = 0.2
    seed: int = 42
    learning_rate: float | None = None
    patience: int = 3
    min_delta: float = 0.0
    steps_per_epoch: int | None = None
    weights: str | Path | None = None
    offline: bool = False
    augment: bool = True
    run_eagerly: bool = False
    verbose: int = 2


@dataclass
class EvalResult:
    """Test-set outcome of one model: per-image P(dog) and the summary metrics."""

    files: list[str]
    targets: list[int]
    dog_probabilities: list[float]
    accuracy: float
    f1: float
    auroc: float
    confusion_matrix: list[list[int]]


def _check_config(config: TrainConfig) -> None:
    for name in ("image_size", "epochs", "batch_size"):
        if getattr(config, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise CatDogError(f"{flag} must be a positive integer, got {getattr(config, name)}")
    if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
        raise CatDogError(f"--steps-per-epoch must be a positive integer, got {config.steps_per_epoch}")


def evaluate_model(model: keras.Model, test: Any, files: list[str]) -> EvalResult:
    """Predict the unshuffled ``test`` pipeline and score it against the folder of each file."""
    probabilities = model.predict(test, verbose=0)
    p_dog = dog_probability(probabilities)
    targets = data_lib.labels_from_files(files)
    if len(p_dog) != len(targets):
        raise RuntimeError(f"{len(p_dog)} predictions for {len(targets)} test files")
    if np.asarray(probabilities).shape[1] == 2:
        predictions = np.argmax(probabilities, axis=1).tolist()
    else:
        predictions = [int(p >= 0.5) for p in p_dog]
    matrix = binary_confusion_matrix(targets, predictions)
    (tn, fp), (fn, tp) = matrix
    accuracy = (tn + tp) / max(1, len(targets))
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)  # dog is the positive class
    auc = keras.metrics.AUC(num_thresholds=2001, curve="ROC")
    auc.update_state(np.asarray(targets, dtype="float32"), np.asarray(p_dog, dtype="float32"))
    auroc = min(1.0, max(0.0, float(keras.ops.convert_to_numpy(auc.result()))))
    return EvalResult(files, targets, p_dog, float(accuracy), float(f1), auroc, matrix)


def train(config: TrainConfig) -> RunMetrics:
    """Train ``config.model``, evaluate it on ``<data>/test`` and write the run directory."""
    _check_config(config)
    spec = get_spec(config.model)
    run_dir = Path(config.out)
    data_lib.check_dataset(config.data)
    keras.utils.set_random_seed(config.seed)
    model = build_model(
        spec.name,
        image_size=config.image_size,
        weights=config.weights,
        offline=config.offline,
        learning_rate=config.learning_rate,
        run_eagerly=config.run_eagerly,
    )
    splits = data_lib.load_splits(
        config.data,
        image_size=config.image_size,
        batch_size=config.batch_size,
        label_mode=spec.label_mode,
        val_fraction=config.val_fraction,
        seed=config.seed,
        augment=config.augment,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    callbacks = make_callbacks(spec, run_dir, patience=config.patience, min_delta=config.min_delta)
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
    train_seconds = time.perf_counter() - start
    epochs_run = len(history.history.get("loss", []))
    final_path = run_dir / FINAL_MODEL
    model.save(final_path)

    best_path = run_dir / CHECKPOINTS_DIRNAME / BEST_CHECKPOINT
    evaluated = keras.saving.load_model(best_path) if best_path.is_file() else model
    checkpoint = best_path if best_path.is_file() else final_path
    result = evaluate_model(evaluated, splits.test, splits.test_files)

    info = {
        "model": spec.name,
        "pretrained": spec.pretrained,
        "epochs": epochs_run,
        "train_seconds": round(train_seconds, 3),
        "backend": keras.backend.backend(),
        "class_names": list(CLASSES),
        "train_images": splits.train_count,
        "val_images": splits.val_count,
        "test_images": len(splits.test_files),
        "checkpoint": str(checkpoint),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    (run_dir / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    metrics = RunMetrics(
        model=spec.name,
        framework="keras",
        pretrained=spec.pretrained,
        accuracy=result.accuracy,
        f1=result.f1,
        auroc=result.auroc,
        confusion_matrix=result.confusion_matrix,
        num_params=int(model.count_params()),
        epochs=epochs_run,
        train_seconds=round(train_seconds, 3),
        checkpoint=str(checkpoint),
    )
    write_metrics(metrics, run_dir)
    return metrics


def _find_run_info(model_path: Path) -> tuple[Path, dict[str, Any]] | None:
    for folder in (model_path.parent, model_path.parent.parent):
        path = folder / RUN_INFO
        if path.is_file():
            return folder, json.loads(path.read_text())
    return None


def evaluate(
    model_path: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    batch_size: int = 32,
    name: str | None = None,
) -> RunMetrics:
    """Evaluate a saved ``.keras`` model on ``<data>/test`` and write ``metrics.json``.

    The model name, epochs and training time come from the ``run.json`` of its run directory (the
    model's folder or the one above it) when there is one. ``out`` defaults to that run directory,
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
    run_dir, info = found if found else (model_path.parent, {})
    model = keras.saving.load_model(model_path)
    image_size = int(model.input_shape[1])
    test, files = data_lib.load_test(data, image_size=image_size, batch_size=batch_size)
    result = evaluate_model(model, test, files)
    metrics = RunMetrics(
        model=name or info.get("model") or model.name,
        framework="keras",
        pretrained=bool(info.get("pretrained", False)),
        accuracy=result.accuracy,
        f1=result.f1,
        auroc=result.auroc,
        confusion_matrix=result.confusion_matrix,
        num_params=int(model.count_params()),
        epochs=int(info.get("epochs", 0)),
        train_seconds=float(info.get("train_seconds", 0.0)),
        checkpoint=str(model_path),
    )
    write_metrics(metrics, out if out is not None else run_dir)
    return metrics
