"""Every number the project reports, computed one way: from saved predictions, torch-free.

Each trainer (Lightning, Poutyne, Keras) writes ``predictions.csv`` for the test split (``file``:
path relative to the dataset root, ``label``: 0 cat / 1 dog, ``p_dog``: P(dog) at full precision), and
``val_predictions.csv`` the same way for the validation split (what ``catdog calibrate`` fits on), then
:func:`run_metrics_from_predictions` turns the test file into the ``metrics.json`` row (schema
:class:`RunMetrics`) with :func:`score`. The report reads only these files, so every row of the
results table comes from the same function. A prediction is "dog" when ``p_dog > 0.5``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from catdog import CLASSES, CatDogError

METRICS_FILENAME = "metrics.json"
PREDICTIONS_FILENAME = "predictions.csv"
#: The same rows for the validation images, written by the trainers for the checkpoint they test
#: (what ``catdog calibrate`` fits on: never the test split).
VAL_PREDICTIONS_FILENAME = "val_predictions.csv"
PREDICTION_COLUMNS = ("file", "label", "p_dog")
#: P(dog) above this is a "dog" prediction (ties go to cat, as ``argmax`` of two equal logits does).
THRESHOLD = 0.5
#: Equal-width confidence bins of the expected calibration error.
ECE_BINS = 10
#: Probabilities are clipped to [EPS, 1 - EPS] in the log loss (as scikit-learn's ``log_loss`` does).
EPS = 1e-15
FRAMEWORKS = ("lightning", "poutyne", "keras")


@dataclass
class RunMetrics:
    """One trained and tested model: the row of the results table.

    ``confusion_matrix`` is ``[[cat->cat, cat->dog], [dog->cat, dog->dog]]`` (rows: true class).
    """

    model: str
    framework: str
    pretrained: bool
    accuracy: float
    f1: float
    auroc: float | None
    confusion_matrix: list[list[int]]
    num_params: int
    epochs: int
    train_seconds: float
    checkpoint: str | None = None
    balanced_accuracy: float | None = None
    ece: float | None = None
    n_test: int | None = None
    predictions: str | None = None

    def __post_init__(self) -> None:
        validate(asdict(self))


def validate(data: dict[str, Any], source: str = "metrics") -> None:
    """Raise :class:`CatDogError` naming ``source`` and the bad field when ``data`` breaks the schema."""
    expected = {f.name for f in fields(RunMetrics)}
    optional = {"checkpoint", "balanced_accuracy", "ece", "n_test", "predictions"}
    missing = sorted(expected - set(data) - optional)
    if missing:
        raise CatDogError(f"{source}: missing field(s) {', '.join(missing)}")
    if data["framework"] not in FRAMEWORKS:
        raise CatDogError(f"{source}: framework must be one of {FRAMEWORKS}, got {data['framework']!r}")
    for key in ("accuracy", "f1", "auroc", "balanced_accuracy", "ece"):
        value = data.get(key)
        if value is None and key not in ("accuracy", "f1"):
            continue  # AUROC is undefined with one class only; the others are optional
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise CatDogError(f"{source}: {key} must be a number in [0, 1], got {value!r}")
    matrix = data["confusion_matrix"]
    if not (
        isinstance(matrix, list)
        and len(matrix) == 2
        and all(isinstance(row, list) and len(row) == 2 for row in matrix)
        and all(isinstance(v, int) and v >= 0 for row in matrix for v in row)
    ):
        raise CatDogError(f"{source}: confusion_matrix must be a 2x2 list of non-negative integers")
    for key in ("num_params", "epochs"):
        if not isinstance(data[key], int) or data[key] < 0:
            raise CatDogError(f"{source}: {key} must be a non-negative integer, got {data[key]!r}")


def write_metrics(metrics: RunMetrics, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``<run_dir>/metrics.json`` and return its path."""
    path = Path(run_dir) / METRICS_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(metrics), indent=2) + "\n")
    return path


def read_metrics(path: str | os.PathLike[str]) -> RunMetrics:
    """Read and validate one ``metrics.json``; errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CatDogError(f"{path}: file not found") from err
    except json.JSONDecodeError as err:
        raise CatDogError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CatDogError(f"{path}: expected a JSON object")
    validate(data, source=str(path))
    known = {f.name for f in fields(RunMetrics)}
    return RunMetrics(**{k: v for k, v in data.items() if k in known})


def binary_confusion_matrix(targets: list[int], predictions: list[int]) -> list[list[int]]:
    """2x2 confusion matrix from class indices (rows: true class, columns: predicted)."""
    matrix = [[0, 0], [0, 0]]
    for target, prediction in zip(targets, predictions, strict=True):
        matrix[int(target)][int(prediction)] += 1
    return matrix


# -- metrics from predictions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """Every metric of one test run, from its labels and P(dog)."""

    accuracy: float
    balanced_accuracy: float
    f1: float
    auroc: float | None
    ece: float
    confusion_matrix: list[list[int]]
    n: int
    nll: float
    brier: float

    def collapse_warning(self, batchnorm_layers: int | None = None) -> str | None:
        """A sentence when the predictions look collapsed onto one class although they rank well.

        Accuracy within 2 points of the majority-class share while AUROC is at least 0.8: the scores separate
        the classes, the threshold does not. ``batchnorm_layers``, the model's count when the caller knows it,
        picks the likely cause: stale BatchNorm running statistics after a short run where the model has them,
        a decision threshold (output bias) the run has not yet learned where it has none.
        """
        counts = [sum(row) for row in self.confusion_matrix]
        majority = max(counts) / max(1, self.n)
        predicted = [self.confusion_matrix[0][c] + self.confusion_matrix[1][c] for c in range(2)]
        one_class = min(predicted) <= 0.02 * self.n
        if self.auroc is None or self.auroc < 0.8 or not (one_class or self.accuracy <= majority + 0.02):
            return None
        if batchnorm_layers is None:
            cause = ("where the model has BatchNorm layers, typically running statistics that do not match the "
                     "trained weights after a short run; otherwise an output bias not yet learned")  # fmt: skip
        elif batchnorm_layers > 0:
            cause = (f"the model has {batchnorm_layers} BatchNorm layer(s): typically their running statistics do "
                     "not match the trained weights after a short run")  # fmt: skip
        else:
            cause = ("the model has no BatchNorm layers, so not their statistics: typically an output bias the run "
                     "has not yet learned (too few steps, or a learning rate too low for the last layer)")  # fmt: skip
        return (
            f"accuracy {self.accuracy:.3f} is at the majority-class share {majority:.3f} while AUROC is "
            f"{self.auroc:.3f}: the model ranks cats and dogs well but calls almost everything one class ({cause})"
        )


def binary_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """Exact area under the ROC curve (Mann-Whitney U with average ranks for ties); None with one class."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank of each distinct score
    rank_sum = float(average_rank[inverse][labels == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def expected_calibration_error(
    labels: Sequence[int] | np.ndarray, p_dog: Sequence[float] | np.ndarray, bins: int = ECE_BINS
) -> float:
    """Expected calibration error of the predicted class: sum over equal-width confidence bins of
    ``|accuracy - mean confidence| * share of images``."""
    labels = np.asarray(labels, dtype=np.int64)
    p_dog = np.asarray(p_dog, dtype=np.float64)
    if len(labels) == 0:
        return 0.0
    predicted = (p_dog > THRESHOLD).astype(np.int64)
    confidence = np.where(predicted == 1, p_dog, 1.0 - p_dog)
    correct = (predicted == labels).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += abs(correct[members].mean() - confidence[members].mean()) * members.sum()
    return float(total / len(labels))


def log_loss(labels: Sequence[int] | np.ndarray, p_dog: Sequence[float] | np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log; P clipped to [EPS, 1 - EPS])."""
    labels = np.asarray(labels, dtype=np.int64)
    p = np.clip(np.asarray(p_dog, dtype=np.float64), EPS, 1.0 - EPS)
    if len(labels) == 0:
        return 0.0
    return float(-np.mean(np.where(labels == 1, np.log(p), np.log1p(-p))))


def brier_score(labels: Sequence[int] | np.ndarray, p_dog: Sequence[float] | np.ndarray) -> float:
    """Mean squared difference between P(dog) and the label (0 cat, 1 dog)."""
    labels = np.asarray(labels, dtype=np.float64)
    p_dog = np.asarray(p_dog, dtype=np.float64)
    return float(np.mean((p_dog - labels) ** 2)) if len(labels) else 0.0


def reliability_curve(
    labels: Sequence[int] | np.ndarray, p_dog: Sequence[float] | np.ndarray, bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per non-empty confidence bin, for a reliability diagram."""
    labels = np.asarray(labels, dtype=np.int64)
    p_dog = np.asarray(p_dog, dtype=np.float64)
    predicted = (p_dog > THRESHOLD).astype(np.int64)
    confidence = np.where(predicted == 1, p_dog, 1.0 - p_dog)
    correct = (predicted == labels).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    return [
        (float(confidence[index == b].mean()), float(correct[index == b].mean()), int((index == b).sum()))
        for b in range(bins)
        if (index == b).any()
    ]


def score(labels: Sequence[int] | np.ndarray, p_dog: Sequence[float] | np.ndarray) -> Scores:
    """Accuracy, balanced accuracy, F1 (dog is positive), exact AUROC, ECE, log loss, Brier score and the
    confusion matrix."""
    labels = np.asarray(labels, dtype=np.int64)
    p_dog = np.asarray(p_dog, dtype=np.float64)
    if len(labels) == 0:
        raise CatDogError("no predictions to score")
    if len(labels) != len(p_dog):
        raise CatDogError(f"{len(labels)} labels but {len(p_dog)} probabilities")
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        raise CatDogError(f"labels must be 0 ({CLASSES[0]}) or 1 ({CLASSES[1]}), got {sorted(set(labels.tolist()))}")
    if not np.all(np.isfinite(p_dog)) or p_dog.min() < 0.0 or p_dog.max() > 1.0:
        raise CatDogError("p_dog must hold probabilities in [0, 1]")
    predicted = (p_dog > THRESHOLD).astype(np.int64)
    matrix = binary_confusion_matrix(labels.tolist(), predicted.tolist())
    (tn, fp), (fn, tp) = matrix
    recalls = [tn / (tn + fp) if tn + fp else None, tp / (tp + fn) if tp + fn else None]
    present = [r for r in recalls if r is not None]
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return Scores(
        accuracy=(tn + tp) / len(labels),
        balanced_accuracy=float(sum(present) / len(present)),
        f1=float(f1),
        auroc=binary_auroc(labels, p_dog),
        ece=expected_calibration_error(labels, p_dog),
        confusion_matrix=matrix,
        n=len(labels),
        nll=log_loss(labels, p_dog),
        brier=brier_score(labels, p_dog),
    )


def write_predictions(
    files: Sequence[str],
    labels: Sequence[int],
    p_dog: Sequence[float],
    run_dir: str | os.PathLike[str],
    filename: str = PREDICTIONS_FILENAME,
) -> Path:
    """Write ``<run_dir>/<filename>`` (file, label, p_dog at full precision; ``predictions.csv`` for the test
    split, :data:`VAL_PREDICTIONS_FILENAME` for the validation split) and return its path."""
    if not len(files) == len(labels) == len(p_dog):
        raise ValueError(f"{len(files)} files, {len(labels)} labels and {len(p_dog)} probabilities")
    path = Path(run_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        for name, label, prob in zip(files, labels, p_dog, strict=True):
            writer.writerow([name, int(label), repr(float(prob))])
    return path


@dataclass(frozen=True)
class Predictions:
    """The rows of one ``predictions.csv``."""

    files: list[str]
    labels: np.ndarray
    p_dog: np.ndarray

    def score(self) -> Scores:
        return score(self.labels, self.p_dog)


def read_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read a ``predictions.csv``; errors name the file and the line."""
    path = Path(path)
    files: list[str] = []
    labels: list[int] = []
    probs: list[float] = []
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(header[:3]) != PREDICTION_COLUMNS:
                raise CatDogError(f"{path}: expected the header {','.join(PREDICTION_COLUMNS)}, got {header}")
            for line, row in enumerate(reader, start=2):
                try:
                    files.append(row[0])
                    labels.append(int(row[1]))
                    probs.append(float(row[2]))
                except (IndexError, ValueError) as err:
                    raise CatDogError(f"{path}, line {line}: malformed row {row} ({err})") from err
    except FileNotFoundError as err:
        raise CatDogError(f"{path}: file not found") from err
    return Predictions(files, np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64))


def run_metrics_from_predictions(
    predictions_path: str | os.PathLike[str],
    *,
    model: str,
    framework: str,
    pretrained: bool,
    num_params: int,
    epochs: int,
    train_seconds: float,
    checkpoint: str | None = None,
) -> RunMetrics:
    """The ``metrics.json`` row of a run, every number computed from its ``predictions.csv``."""
    scores = read_predictions(predictions_path).score()
    return RunMetrics(
        model=model,
        framework=framework,
        pretrained=bool(pretrained),
        accuracy=float(scores.accuracy),
        f1=scores.f1,
        auroc=scores.auroc,
        confusion_matrix=scores.confusion_matrix,
        num_params=int(num_params),
        epochs=int(epochs),
        train_seconds=float(train_seconds),
        checkpoint=checkpoint,
        balanced_accuracy=scores.balanced_accuracy,
        ece=scores.ece,
        n_test=scores.n,
        predictions=Path(predictions_path).name,
    )
