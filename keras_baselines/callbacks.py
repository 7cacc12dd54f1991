"""Training callbacks: ``SaveModel`` (every epoch) and the per-model callback set.

The checkpoint rule is the project's one rule for every model: ``checkpoints/best.keras`` is the epoch
with the lowest ``val_loss``, ``checkpoints/last.keras`` the final completed epoch (always).
"""

from __future__ import annotations

from pathlib import Path

import keras

from keras_baselines.models import ModelSpec

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


def make_callbacks(
    spec: ModelSpec, run_dir: str | Path, patience: int = 3, min_delta: float = 0.0
) -> list[keras.callbacks.Callback]:
    """CSV history, best (lowest ``val_loss``) and last checkpoints for every model; SaveModel and early
    stopping (also on ``val_loss``) for the models of the original work that had them.

    Early stopping does not restore weights: the best epoch is ``best.keras``, and ``last.keras`` stays
    the final epoch.
    """
    run_dir = Path(run_dir)
    checkpoints = run_dir / CHECKPOINTS_DIRNAME
    checkpoints.mkdir(parents=True, exist_ok=True)
    callbacks: list[keras.callbacks.Callback] = [
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
