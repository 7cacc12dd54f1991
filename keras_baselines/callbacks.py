"""Training callbacks: ``SaveModel`` (every epoch) and the per-model callback set."""

from __future__ import annotations

from pathlib import Path

import keras

from keras_baselines.models import ModelSpec

EPOCHS_DIRNAME = "epochs"
CHECKPOINTS_DIRNAME = "checkpoints"
BEST_CHECKPOINT = "best.keras"
HISTORY_FILENAME = "history.csv"


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


def make_callbacks(
    spec: ModelSpec, run_dir: str | Path, patience: int = 3, min_delta: float = 0.0
) -> list[keras.callbacks.Callback]:
    """The callbacks of ``spec``: CSV history always; SaveModel, early stopping, best checkpoint per model.

    Early stopping and the best checkpoint both watch ``val_accuracy``; early stopping restores the best
    weights at the end of training.
    """
    run_dir = Path(run_dir)
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.CSVLogger(str(run_dir / HISTORY_FILENAME))]
    if spec.save_every_epoch:
        callbacks.append(SaveModel(run_dir / EPOCHS_DIRNAME))
    if spec.checkpoint_best:
        (run_dir / CHECKPOINTS_DIRNAME).mkdir(parents=True, exist_ok=True)
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(run_dir / CHECKPOINTS_DIRNAME / BEST_CHECKPOINT),
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
            )
        )
    if spec.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                mode="max",
                patience=patience,
                min_delta=min_delta,
                restore_best_weights=True,
            )
        )
    return callbacks
