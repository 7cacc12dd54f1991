"""The ``metrics.json`` schema shared by every trainer (Lightning, Poutyne, Keras) and the report."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from catdog import CatDogError

METRICS_FILENAME = "metrics.json"
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
    auroc: float
    confusion_matrix: list[list[int]]
    num_params: int
    epochs: int
    train_seconds: float
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        validate(asdict(self))


def validate(data: dict[str, Any], source: str = "metrics") -> None:
    """Raise :class:`CatDogError` naming ``source`` and the bad field when ``data`` breaks the schema."""
    expected = {f.name for f in fields(RunMetrics)}
    missing = sorted(expected - set(data) - {"checkpoint"})
    if missing:
        raise CatDogError(f"{source}: missing field(s) {', '.join(missing)}")
    if data["framework"] not in FRAMEWORKS:
        raise CatDogError(f"{source}: framework must be one of {FRAMEWORKS}, got {data['framework']!r}")
    for key in ("accuracy", "f1", "auroc"):
        value = data[key]
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
