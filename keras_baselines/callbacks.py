"""Training callbacks: ``SaveModel`` (every epoch) and the per-model callback set.

The checkpoint rule is the project's one rule for every model: ``checkpoints/best.keras`` is the epoch
with the lowest ``val_loss``, ``checkpoints/last.keras`` the final completed epoch (always).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import keras

from keras_baselines import DEFAULT_BN_MIN_VALUES
from keras_baselines.models import ModelSpec, batch_norm_layers

EPOCHS_DIRNAME = "epochs"
CHECKPOINTS_DIRNAME = "checkpoints"
BEST_CHECKPOINT = "best.keras"
LAST_CHECKPOINT = "last.keras"
HISTORY_FILENAME = "history.csv"
#: The one checkpoint-selection rule of the project.
MONITOR, MODE = "val_loss", "min"


class SaveModel(keras.callbacks.Callback):
    """Save the whole model (``.keras``) at the end of every epoch, to ``directory/epoch_NNN.keras``."""

    def __init__(self, directory: str | Path, pattern: str = "epoch_{epoch:03d}.keras") -> None:
        super().__init__()
        self.directory = Path(directory)
        self.pattern = pattern
        self.saved: list[Path] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / self.pattern.format(epoch=epoch + 1)
        self.model.save(path)
        self.saved.append(path)


class BatchNormRecalibration(keras.callbacks.Callback):
    """Before each validation of ``fit``, re-estimate the BatchNorm running statistics on training batches.

    The Keras form of the torch trainers' policy (``catdog.training.module.recalibrate_batchnorm``, i.e.
    ``torch.optim.swa_utils.update_bn``): on up to ``max_batches`` batches of ``train`` the statistics
    become the exact average of the batch statistics for the current weights (momentum ``1 - 1/k`` on
    batch ``k``), then the layers' momenta are restored. Only while fewer than ``max_steps`` optimizer
    steps have run: after a short run the moving averages still hold mostly their initial values, and a
    model evaluated with them calls (almost) every image one class. Batches of one image are skipped.
    """

    def __init__(self, train: Any, max_batches: int = 32, max_steps: int = 500) -> None:
        super().__init__()
        self.train = train
        self.max_batches = max_batches
        self.max_steps = max_steps
        self.recalibrations = 0  # how many validations were preceded by a re-estimation
        self._fitting = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._fitting = True

    def on_train_end(self, logs: dict | None = None) -> None:
        self._fitting = False

    def on_test_begin(self, logs: dict | None = None) -> None:
        steps = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if not self._fitting or self.max_batches <= 0 or steps >= self.max_steps:
            return
        if recalibrate_batchnorm(self.model, self.train, self.max_batches):
            self.recalibrations += 1


def recalibrate_batchnorm(
    model: keras.Model, batches: Any, max_batches: int | None = None, min_values: int = DEFAULT_BN_MIN_VALUES
) -> int:
    """Replace every BatchNormalization layer's moving statistics by their average over ``batches``
    (``(images, labels)`` pairs; at most ``max_batches``) in training mode; returns the batches used.

    A layer that saw fewer than ``min_values`` values per channel (images x height x width over the batches
    read: the deep, small layers of a small run) keeps the statistics it had, as in the torch trainers.
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    kept = [(keras.ops.copy(layer.moving_mean), keras.ops.copy(layer.moving_variance)) for layer in layers]
    values_per_image = [_values_per_channel(layer) for layer in layers]
    used = images_seen = 0
    try:
        for images, _ in itertools.islice(iter(batches), max_batches):
            if len(images) < 2:
                continue
            used += 1
            images_seen += len(images)
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / used  # running average: the k-th batch weighs 1/k
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    for layer, (mean, variance), per_image in zip(layers, kept, values_per_image, strict=True):
        if images_seen * per_image < min_values:
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
    return used


def _values_per_channel(layer: keras.layers.BatchNormalization) -> int:
    """Values per channel one image gives ``layer`` (the product of its input's non-channel dimensions)."""
    shape = layer.input.shape
    axis = layer.axis[0] if isinstance(layer.axis, list | tuple) else layer.axis
    axis %= len(shape)
    return int(math.prod(d for i, d in enumerate(shape) if i not in (0, axis)))


def make_callbacks(
    spec: ModelSpec,
    run_dir: str | Path,
    patience: int = 3,
    min_delta: float = 0.0,
    train: Any = None,
    bn_recalibration_batches: int = 32,
    bn_recalibration_steps: int = 500,
) -> list[keras.callbacks.Callback]:
    """The callbacks of one run, in order: BatchNorm re-estimation on ``train`` (when given), CSV history,
    best (lowest ``val_loss``) and last checkpoints for every model; SaveModel and early stopping (also on
    ``val_loss``) for the models of the original work that had them.

    Early stopping does not restore weights: the best epoch is ``best.keras``, and ``last.keras`` stays
    the final epoch.
    """
    run_dir = Path(run_dir)
    checkpoints = run_dir / CHECKPOINTS_DIRNAME
    checkpoints.mkdir(parents=True, exist_ok=True)
    callbacks: list[keras.callbacks.Callback] = []
    if train is not None:
        callbacks.append(BatchNormRecalibration(train, bn_recalibration_batches, bn_recalibration_steps))
    callbacks += [
        keras.callbacks.CSVLogger(str(run_dir / HISTORY_FILENAME)),
        keras.callbacks.ModelCheckpoint(
            str(checkpoints / BEST_CHECKPOINT), monitor=MONITOR, mode=MODE, save_best_only=True
        ),
        keras.callbacks.ModelCheckpoint(str(checkpoints / LAST_CHECKPOINT), save_best_only=False),
    ]
    if spec.save_every_epoch:
        callbacks.append(SaveModel(run_dir / EPOCHS_DIRNAME))
    if spec.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=MONITOR, mode=MODE, patience=patience, min_delta=min_delta)
        )
    return callbacks
