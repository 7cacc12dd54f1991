"""``catdog calibrate``: a map from the network's dog logit to probabilities that mean what they say.

    catdog calibrate RUN [RUN ...] [--method temperature|platt] [--min-images 30] [--skip-unfit]

The map is fitted on the run's ``val_predictions.csv`` only (the validation images of the checkpoint the run
tested; never ``predictions.csv``, the test split) by minimising the validation log loss:

* ``temperature`` (default): ``P(dog) = sigmoid(z / T)`` with ``z = logit(P(dog))`` the network's dog logit
  (``z1 - z0`` of its two logits). One parameter; the ranking and every decision stay as they were, only the
  confidence changes, so accuracy cannot move.
* ``platt``: ``P(dog) = sigmoid(a * z + b)``, a logistic regression on the logit. The offset ``b`` moves the
  decision point, so accuracy can change (for better when a short run's threshold was off).

Both are the same affine map of the logit (``scale``, ``offset``; the temperature's ``scale`` is ``1/T``),
which ``catdog export`` bakes into the ONNX graph. The fit writes ``<run>/calibration.json``: method,
parameters, validation NLL/ECE/Brier/accuracy before and after, number of images and the sha256 of the file
it was fitted on. With fewer than ``--min-images`` validation images, or fewer than
:data:`MIN_PER_CLASS` of a class, it refuses rather than over-fit. Torch-free: numpy and
:mod:`catdog.metrics` (every number) only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catdog import CatDogError
from catdog.metrics import (
    EPS,
    METRICS_FILENAME,
    PREDICTIONS_FILENAME,
    VAL_PREDICTIONS_FILENAME,
    Predictions,
    Scores,
    read_predictions,
)
from catdog.utils import file_sha256

CALIBRATION_FILENAME = "calibration.json"
METHODS = ("temperature", "platt")
#: Fewest validation images a map is fitted on (``--min-images``), and fewest of each class.
MIN_IMAGES = 30
MIN_PER_CLASS = 5
#: The temperature is searched in [T_MIN, T_MAX].
T_MIN, T_MAX = 0.02, 50.0


@dataclass(frozen=True)
class CalibrationMap:
    """``P(dog) = sigmoid(scale * z + offset)`` of the network's dog logit ``z``; ``temperature`` is ``1/scale``."""

    method: str
    scale: float
    offset: float = 0.0

    @property
    def temperature(self) -> float | None:
        return 1.0 / self.scale if self.method == "temperature" else None

    def parameters(self) -> dict[str, float]:
        """The method's own parameters: ``{"temperature": T}`` or ``{"scale": a, "offset": b}``."""
        if self.method == "temperature":
            return {"temperature": 1.0 / self.scale}
        return {"scale": self.scale, "offset": self.offset}

    def apply(self, p_dog: Sequence[float] | np.ndarray) -> np.ndarray:
        """Calibrated P(dog) from the network's P(dog)."""
        return sigmoid(self.scale * logit(p_dog) + self.offset)

    def describe(self) -> str:
        if self.method == "temperature":
            return f"temperature {1.0 / self.scale:.4g}"
        return f"Platt scale {self.scale:.4g}, offset {self.offset:+.4g}"


@dataclass(frozen=True)
class Calibration:
    """What ``calibration.json`` holds."""

    method: str
    parameters: dict[str, float]
    scale: float
    offset: float
    fitted_on: str
    fitted_on_sha256: str
    n_images: int
    n_cats: int
    n_dogs: int
    val_before: dict[str, float]
    val_after: dict[str, float]
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None

    @property
    def map(self) -> CalibrationMap:
        return CalibrationMap(self.method, self.scale, self.offset)


def logit(p_dog: Sequence[float] | np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to [EPS, 1 - EPS] (the network's dog logit, ``z1 - z0``)."""
    p = np.clip(np.asarray(p_dog, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # stable at both ends


def fit_temperature(labels: np.ndarray, z: np.ndarray) -> CalibrationMap:
    """The temperature of least mean log loss on (``labels``, logits ``z``), found by bisection.

    The loss is convex in ``s = 1/T`` and its derivative ``mean((sigmoid(s z) - y) z)`` increases with ``s``,
    so the root in [1/T_MAX, 1/T_MIN] is the minimum. Refuses when every image is on its right side of 0
    (the loss then falls forever as ``T`` goes to 0: nothing to fit).
    """
    y = np.asarray(labels, dtype=np.float64)
    if np.all((z > 0) == (y == 1)):
        raise CatDogError(
            "every validation image is already classified right, so the log loss keeps falling as the temperature "
            "goes to 0: there is no finite temperature to fit; validate on more (or harder) images"
        )

    def slope(s: float) -> float:
        return float(np.mean((sigmoid(s * z) - y) * z))

    low, high = 1.0 / T_MAX, 1.0 / T_MIN
    if slope(low) >= 0:
        return CalibrationMap("temperature", low)
    if slope(high) <= 0:
        return CalibrationMap("temperature", high)
    while high - low > 1e-13 * high:
        middle = 0.5 * (low + high)
        low, high = (middle, high) if slope(middle) < 0 else (low, middle)
    return CalibrationMap("temperature", 0.5 * (low + high))


def fit_platt(labels: np.ndarray, z: np.ndarray, max_steps: int = 100) -> CalibrationMap:
    """Scale and offset of least mean log loss (unregularised logistic regression on ``z``), by Newton steps
    halved until the loss falls. Refuses when a threshold on ``z`` separates the classes (no finite fit)."""
    y = np.asarray(labels, dtype=np.float64)
    if z[y == 0].max() < z[y == 1].min() or z[y == 1].max() < z[y == 0].min():
        raise CatDogError(
            "a threshold on the logit separates the validation cats from the dogs, so the Platt fit has no finite "
            "scale; use --method temperature, or validate on more images"
        )
    x = np.stack([z, np.ones_like(z)], axis=1)
    params = np.array([1.0, 0.0])

    def loss(p: np.ndarray) -> float:
        margin = (2 * y - 1) * (x @ p)
        return float(np.mean(np.logaddexp(0.0, -margin)))

    for _ in range(max_steps):
        prob = sigmoid(x @ params)
        gradient = x.T @ (prob - y) / len(y)
        hessian = (x * (prob * (1 - prob))[:, None]).T @ x / len(y) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        current, factor = loss(params), 1.0
        while factor > 1e-10 and loss(params - factor * step) > current:
            factor /= 2
        params = params - factor * step
        if np.abs(gradient).max() < 1e-12 or factor <= 1e-10:
            break
    return CalibrationMap("platt", float(params[0]), float(params[1]))


def fit(predictions: Predictions, method: str = "temperature", min_images: int = MIN_IMAGES) -> CalibrationMap:
    """Fit ``method`` on validation ``predictions``; :class:`CatDogError` when they are too few to trust."""
    if method not in METHODS:
        raise CatDogError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    labels = predictions.labels
    n, dogs = len(labels), int(labels.sum())
    if n < min_images or min(dogs, n - dogs) < MIN_PER_CLASS:
        raise CatDogError(
            f"only {n} validation images ({n - dogs} cats, {dogs} dogs): calibration needs at least {min_images} "
            f"with {MIN_PER_CLASS} of each class to fit without over-fitting; hold out more validation images "
            "(data.val_fraction, --val-fraction) or export uncalibrated (catdog export --uncalibrated)"
        )
    z = logit(predictions.p_dog)
    return fit_temperature(labels, z) if method == "temperature" else fit_platt(labels, z)


def summary(scores: Scores) -> dict[str, float]:
    """The figures ``calibration.json`` keeps for the validation split, before and after."""
    return {"nll": scores.nll, "ece": scores.ece, "brier": scores.brier, "accuracy": scores.accuracy}


def calibrate_run(
    run_dir: str | os.PathLike[str], method: str = "temperature", min_images: int = MIN_IMAGES
) -> Calibration:
    """Fit on ``<run_dir>/val_predictions.csv`` and write ``<run_dir>/calibration.json``; returns what it wrote.

    Reads no other predictions: a run folder without its test predictions calibrates the same.
    """
    run = Path(run_dir)
    source = run / VAL_PREDICTIONS_FILENAME
    if not source.is_file():
        raise CatDogError(
            f"{run}: no {VAL_PREDICTIONS_FILENAME}; the trainers write it beside {PREDICTIONS_FILENAME} when they "
            "test a checkpoint: rerun the test (catdog test ... --ckpt_path best, catdog poutyne, keras_baselines)"
        )
    (run / CALIBRATION_FILENAME).unlink(missing_ok=True)  # a refused fit must not leave an older map behind
    predictions = read_predictions(source)
    try:
        cmap = fit(predictions, method, min_images)
    except CatDogError as err:
        raise CatDogError(f"{source}: {err}") from err
    labels, checkpoint = predictions.labels, _tested_checkpoint(run)
    calibration = Calibration(
        method=cmap.method,
        parameters=cmap.parameters(),
        scale=cmap.scale,
        offset=cmap.offset,
        fitted_on=VAL_PREDICTIONS_FILENAME,
        fitted_on_sha256=file_sha256(source),
        n_images=len(labels),
        n_cats=int((labels == 0).sum()),
        n_dogs=int(labels.sum()),
        val_before=summary(predictions.score()),
        val_after=summary(Predictions(predictions.files, labels, cmap.apply(predictions.p_dog)).score()),
        checkpoint=checkpoint,
        checkpoint_sha256=file_sha256(checkpoint) if checkpoint and Path(checkpoint).is_file() else None,
    )
    (run / CALIBRATION_FILENAME).write_text(json.dumps(asdict(calibration), indent=2) + "\n")
    return calibration


def _tested_checkpoint(run: Path) -> str | None:
    """The checkpoint ``metrics.json`` says was tested (the one the validation predictions came from)."""
    try:
        return json.loads((run / METRICS_FILENAME).read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None


def read_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read a ``calibration.json``; errors name the file."""
    path = Path(path)
    try:
        data: Any = json.loads(path.read_text())
        calibration = Calibration(**data)
    except FileNotFoundError as err:
        raise CatDogError(f"{path}: file not found; write it with `catdog calibrate RUN`") from err
    except (ValueError, TypeError) as err:
        raise CatDogError(f"{path}: not a calibration.json written by `catdog calibrate` ({err})") from err
    if calibration.method not in METHODS or not all(map(math.isfinite, (calibration.scale, calibration.offset))):
        raise CatDogError(f"{path}: method must be one of {METHODS} with finite scale and offset")
    return calibration


def calibrated_test_scores(run_dir: str | os.PathLike[str], test: Predictions) -> tuple[Calibration, Scores] | None:
    """The run's map applied to its test predictions, scored; None when the run has no ``calibration.json``."""
    path = Path(run_dir) / CALIBRATION_FILENAME
    if not path.is_file():
        return None
    calibration = read_calibration(path)
    return calibration, score_calibrated(calibration.map, test)


def score_calibrated(cmap: CalibrationMap, predictions: Predictions) -> Scores:
    return Predictions(predictions.files, predictions.labels, cmap.apply(predictions.p_dog)).score()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catdog calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folder(s) holding val_predictions.csv")
    parser.add_argument("--method", choices=METHODS, default="temperature", help="the map (default temperature)")
    parser.add_argument(
        "--min-images", type=int, default=MIN_IMAGES, help=f"fewest validation images to fit on ({MIN_IMAGES})"
    )
    parser.add_argument(
        "--skip-unfit", action="store_true",
        help="report a run that cannot be fitted (too few images, nothing to fit) and go on, instead of failing",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for run in args.runs:
        try:
            c = calibrate_run(run, args.method, args.min_images)
        except CatDogError as err:
            if not args.skip_unfit:
                raise
            print(f"catdog calibrate: {run}: left uncalibrated: {err}")
            continue
        b, a = c.val_before, c.val_after
        print(
            f"{run}: {c.map.describe()} fitted on {c.n_images} validation images; validation NLL {b['nll']:.4f} -> "
            f"{a['nll']:.4f}, ECE {b['ece']:.4f} -> {a['ece']:.4f}, accuracy {b['accuracy']:.4f} -> "
            f"{a['accuracy']:.4f}; wrote {Path(run) / CALIBRATION_FILENAME}"
        )
    return 0
