"""Lightning callbacks of ``catdog fit|test|predict``: what a run records, apart from how the model learns.

* :class:`RunRecorder` is Lightning's :class:`~lightning.pytorch.callbacks.Timer` (training time, continued
  across resumes and saved in every checkpoint) that, at the end of ``test``, writes
  ``<run dir>/predictions.csv`` (one row per test image: file relative to the dataset root, label, P(dog)),
  ``<run dir>/val_predictions.csv`` (the same for the validation images, from the same weights: what
  ``catdog calibrate`` fits on) and ``<run dir>/metrics.json`` computed from the test predictions by
  :mod:`catdog.metrics`.
* :class:`EpochSeeds` reseeds every epoch from (run seed, epoch number).
* :class:`PredictionWriter` writes ``<run dir>/predict.csv`` at the end of ``predict`` (any folder of images,
  labels where a ``cat``/``dog`` parent folder says so).
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, Timer

from catdog import CLASSES, DISPLAY_NAMES, CatDogError
from catdog.data.splits import relative_name, write_file_list
from catdog.metrics import (
    VAL_PREDICTIONS_FILENAME,
    run_metrics_from_predictions,
    write_metrics,
    write_predictions,
)
from catdog.training.distributed import gather_rows
from catdog.training.network import count_parameters

#: The validation images of a fit, written into its run folder.
VAL_FILES_NAME = "val_files.txt"


class RunRecorder(Timer):
    """Times training and writes the test predictions and the ``metrics.json`` computed from them.

    The training time is Lightning's :class:`Timer` state (``time_elapsed("train")``), so a resumed fit
    adds to it; the epoch count is the fit loop's own. At ``test`` both are read from the checkpoint
    under test (``epochs`` 0 and ``train_seconds`` 0.0 when testing a model without a checkpoint).
    Rows of ``predictions.csv`` follow the test loader's sampler, so each probability is its image's.
    """

    def __init__(self) -> None:
        super().__init__(duration=None)
        self._rows: list[tuple[int, float]] = []
        self._batch_indices: list[list[int]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        val_set = getattr(datamodule, "val_set", None)
        if trainer.is_global_zero and val_set is not None:  # the validation images, as every trainer records them
            names = [relative_name(path, datamodule.data_dir) for path in val_set.paths]
            write_file_list(names, Path(trainer.default_root_dir) / VAL_FILES_NAME)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []
        self._batch_indices = [list(batch) for batch in _test_loader(trainer).batch_sampler]

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        p_dog = outputs["p_dog"].detach().double().cpu().tolist()
        indices = self._batch_indices[batch_idx]
        if len(indices) != len(p_dog):
            raise RuntimeError(f"test batch {batch_idx}: {len(p_dog)} outputs for {len(indices)} sampled images")
        self._rows += list(zip(indices, p_dog, strict=True))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = gather_rows(trainer, self._rows)
        val_rows = _val_rows(trainer, pl_module)  # every process evaluates its share of the validation split
        if not trainer.is_global_zero:
            return
        dataset = _test_loader(trainer).dataset
        data_dir = trainer.datamodule.data_dir  # type: ignore[attr-defined]
        by_index = dict(rows)
        order = sorted(by_index)
        if order != list(range(len(dataset))) or len(rows) != len(order):
            raise CatDogError(
                f"test predictions: {len(rows)} rows for {len(order)} of the {len(dataset)} test images (a sampler "
                "that pads or drops images? the test loader must read every image once)"
            )
        path = write_predictions(
            [relative_name(dataset.paths[i], data_dir) for i in order],
            [dataset.labels[i] for i in order],
            [by_index[i] for i in order],
            trainer.default_root_dir,
        )
        ckpt_path = getattr(trainer, "ckpt_path", None)
        epochs, seconds = _training_record(ckpt_path, self.state_key)
        metrics = run_metrics_from_predictions(
            path,
            model=pl_module.hparams.model_name,
            framework="lightning",
            pretrained=bool(pl_module.hparams.pretrained or pl_module.hparams.pretrained_file),
            num_params=count_parameters(pl_module.network),
            epochs=epochs,
            train_seconds=round(seconds, 3),
            checkpoint=str(Path(ckpt_path).resolve()) if ckpt_path else None,
        )
        print(f"predictions written to {path}; metrics written to {write_metrics(metrics, trainer.default_root_dir)}")
        val_path = _write_val_predictions(trainer, val_rows)
        if val_path is not None:
            print(f"validation predictions of the same weights written to {val_path}")


def _val_rows(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[tuple[int, float]] | None:
    """(index, P(dog)) of every validation image, from every process (each evaluates its loader's share) with
    the weights under test; None when the data module has no validation split. Every process must call it."""
    datamodule = trainer.datamodule  # type: ignore[attr-defined]
    if datamodule is None or getattr(datamodule, "val_set", None) is None or not len(datamodule.val_set):
        return None
    loader = datamodule.val_dataloader()
    indices = [index for batch in loader.batch_sampler for index in batch]
    was_training = pl_module.training
    pl_module.eval()
    p_dog: list[float] = []
    with torch.inference_mode():
        for images, _ in loader:
            logits = pl_module(images.to(pl_module.device))
            p_dog += logits.double().softmax(dim=1)[:, 1].cpu().tolist()
    pl_module.train(was_training)
    return gather_rows(trainer, list(zip(indices, p_dog, strict=True)))


def _write_val_predictions(trainer: pl.Trainer, rows: list[tuple[int, float]] | None) -> Path | None:
    """``val_predictions.csv``: the validation split in its order, with the P(dog) of ``rows`` (every image once)."""
    if rows is None:
        return None
    datamodule = trainer.datamodule  # type: ignore[attr-defined]
    dataset = datamodule.val_set
    by_index = dict(rows)
    if sorted(by_index) != list(range(len(dataset))) or len(rows) != len(by_index):
        raise CatDogError(f"validation predictions: {len(rows)} rows for the {len(dataset)} validation images")
    names = [relative_name(path, datamodule.data_dir) for path in dataset.paths]
    p_dog = [by_index[i] for i in range(len(dataset))]
    return write_predictions(names, dataset.labels, p_dog, trainer.default_root_dir, VAL_PREDICTIONS_FILENAME)


def _test_loader(trainer: pl.Trainer) -> Any:
    loaders = trainer.test_dataloaders
    return loaders[0] if isinstance(loaders, list | tuple) else loaders


def _training_record(ckpt_path: str | None, state_key: str) -> tuple[int, float]:
    """(epochs trained, training seconds) recorded in a checkpoint; (0, 0.0) without one."""
    if not ckpt_path:
        return 0, 0.0
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    epochs = int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    timer = checkpoint.get("callbacks", {}).get(state_key, {})
    return epochs, float(timer.get("time_elapsed", {}).get("train", 0.0))


class EpochSeeds(Callback):
    """Reseed torch, numpy and ``random`` at the start of every training epoch from (run seed, epoch).

    Each epoch starts from random-generator states that depend only on the run's seed and the epoch number
    (Lightning checkpoints hold no generator state), so the randomness of a resumed fit's epochs (dropout,
    augmentation in the main process) does not depend on how the process got there. The data order and
    the loader's worker seeds are :class:`catdog.data.EpochSampler`'s, also a function of (run seed, epoch).
    Together they make a fit interrupted after an epoch and resumed from ``last.ckpt`` with the same options
    end with the weights, optimizer state and per-epoch ``val_loss`` of the uninterrupted fit (CPU,
    ``tests/training/test_resume.py``). The run seed is ``seed``, else the one ``seed_everything`` set
    (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def reseed(self, epoch: int, rank: int = 0) -> int:
        """Seed torch (every device), numpy and ``random`` for ``epoch`` (counted from 0) in the process of global
        rank ``rank`` (the processes of a distributed run draw different dropout masks); returns the seed."""
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = int(np.random.SeedSequence([base, epoch, *([rank] if rank else [])]).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # every device's generator too
        return seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reseed(trainer.current_epoch, trainer.global_rank)


class PredictionWriter(BasePredictionWriter):
    """Writes ``<run dir>/predict.csv`` (path, label, prediction, P(cat), P(dog)) at the end of predict."""

    def __init__(self, filename: str = "predict.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        loader = trainer.predict_dataloaders
        dataset = (loader[0] if isinstance(loader, list | tuple) else loader).dataset
        indices = [i for batch in (batch_indices[0] if batch_indices else []) for i in batch]
        probs = [row for out in predictions for row in out["probs"].tolist()]
        if len(indices) != len(probs):
            if trainer.world_size > 1:
                raise RuntimeError(f"predict: {len(probs)} predictions for {len(indices)} sampled images")
            indices = list(range(len(probs)))  # no sampler indices recorded: loader order
        rows = gather_rows(trainer, list(zip(indices, probs, strict=True)))  # every process's images
        if not trainer.is_global_zero or not rows:
            return
        by_index = dict(rows)
        if len(rows) != len(by_index):
            raise CatDogError(f"predict: {len(rows)} rows for {len(by_index)} images (the loader repeats images)")
        path = Path(trainer.default_root_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "prediction", "p_cat", "p_dog"])
            for index in sorted(by_index):
                p_cat, p_dog = by_index[index]
                label = dataset.labels[index]
                writer.writerow(
                    [
                        dataset.paths[index],
                        CLASSES[label] if label >= 0 else "",
                        DISPLAY_NAMES[int(p_dog > p_cat)],
                        f"{p_cat:.6f}",
                        f"{p_dog:.6f}",
                    ]
                )
        print(f"predictions written to {path}")
