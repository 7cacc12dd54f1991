"""A fit interrupted after an epoch and resumed with ``--ckpt_path last`` ends where the uninterrupted fit ends.

Compared on the CPU: every parameter and BatchNorm buffer of ``last.ckpt``, the optimizer's state tensors
and learning rates, the schedule's step, and ``val_loss`` / ``train_loss_epoch`` of every epoch (CSV logs).
The runs use ``configs/scratch.yaml`` (its callbacks: ``EpochSeeds``, checkpoints, early stopping) through
the ``catdog fit`` entry point, with a small timm test network on a small generated dataset whose training
split (53 images) is not a whole number of batches of 16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from train_helpers import fit_options, fused_sample, logged

from catdog.cli import main
from catdog.data import CatDogDataModule
from catdog.training.cli import CatDogCLI
from catdog.training.module import CatDogClassifier

MODEL = "test_efficientnet"  # BatchNorm and dropout like the real network, ~0.1M parameters
#: A learning rate that does not depend on max_epochs (no warm-up, no decay).
FLAT_SCHEDULE = ("--model.warmup_epochs", "0", "--model.min_lr_ratio", "1.0")
ATOL = 1e-6


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """53 training, 9 validation images (3 batches of 16 and 5 dropped images per epoch)."""
    root = tmp_path_factory.mktemp("resume-data")
    return fused_sample(root, cats=40, dogs_per_breed=5, breeds=8, size=48, seed=0, cat_train=32, cat_test=8)


def options(data_dir: Path, run_dir: Path, workers: int, epochs: int, *extra: str) -> list[str]:
    model = ["--model.model_name", MODEL, "--trainer.enable_model_summary", "false"]
    return fit_options(
        data_dir, run_dir, *model, *extra, image_size=32, batch_size=16, workers=workers, max_epochs=epochs
    )


class Interrupted(Exception):
    """The fit was stopped from outside."""


class InterruptIn(Callback):
    """Stop the fit in the middle of epoch ``epoch`` (0-based), after ``last.ckpt`` holds the epoch before."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.epoch and args[-1] == 1:  # batch_idx
            raise Interrupted(f"stopped during epoch {self.epoch}")


def interrupted_fit(args: list[str], epoch: int) -> None:
    """``catdog fit`` killed during ``epoch`` (the LightningCLI of ``catdog fit``, with its config's callbacks)."""
    cli = CatDogCLI(CatDogClassifier, CatDogDataModule, args=args, run=False, seed_everything_default=42)
    cli.trainer.callbacks.append(InterruptIn(epoch))
    with pytest.raises(Interrupted):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def logged_epochs(run_dir: Path) -> dict[int, dict[str, float]]:
    """``val_loss`` and ``train_loss_epoch`` by epoch from every CSV log version of a run dir."""
    epochs: dict[int, dict[str, float]] = {}
    for key in ("val_loss", "train_loss_epoch"):
        for epoch, value in logged(run_dir, key).items():
            epochs.setdefault(epoch, {})[key] = value
    return epochs


def largest_difference(a: dict[Any, torch.Tensor], b: dict[Any, torch.Tensor]) -> float:
    """The largest absolute difference between tensors of the same names (the names must be the same)."""
    assert a.keys() == b.keys() and a, (sorted(a), sorted(b))
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def differences(a: Path, b: Path) -> dict[str, float]:
    """Largest absolute differences between two runs: weights and buffers, optimizer state, logged losses."""
    ca = torch.load(a / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    cb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert (ca["epoch"], ca["global_step"]) == (cb["epoch"], cb["global_step"])
    assert ca["lr_schedulers"][0]["last_epoch"] == cb["lr_schedulers"][0]["last_epoch"]
    oa, ob = ca["optimizer_states"][0], cb["optimizer_states"][0]
    moments = {(p, name): value for p, state in oa["state"].items() for name, value in state.items()}
    other = {(p, name): value for p, state in ob["state"].items() for name, value in state.items()}
    rates = [abs(ga["lr"] - gb["lr"]) for ga, gb in zip(oa["param_groups"], ob["param_groups"], strict=True)]
    la, lb = logged_epochs(a), logged_epochs(b)
    assert sorted(la) == sorted(lb) == list(range(ca["epoch"] + 1)), (la, lb)
    return {
        "weights": largest_difference(ca["state_dict"], cb["state_dict"]),  # parameters and BatchNorm buffers
        "optimizer": max(largest_difference(moments, other), *rates),  # step, exp_avg, exp_avg_sq; lr
        "losses": max(abs(la[e][k] - lb[e][k]) for e in la for k in ("val_loss", "train_loss_epoch")),
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_an_interrupted_fit_resumed_from_last_equals_the_uninterrupted_one(
    small_dataset: Path, tmp_path: Path, workers: int
) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(["fit", *options(small_dataset, whole, workers, 3)]) == 0

    interrupted_fit(options(small_dataset, resumed, workers, 3), epoch=2)
    last = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 1 and last["CatDogDataModule"] == {"train_epoch": 2}
    assert main(["fit", *options(small_dataset, resumed, workers, 3, "--ckpt_path", "last")]) == 0

    diff = differences(whole, resumed)
    assert max(diff.values()) <= ATOL, f"resumed vs uninterrupted, largest differences: {diff}"


def test_a_finished_fit_extended_by_an_epoch_equals_the_longer_fit_when_the_schedule_is_flat(
    small_dataset: Path, tmp_path: Path
) -> None:
    """``--trainer.max_epochs 2`` then ``--trainer.max_epochs 3 --ckpt_path last`` against ``max_epochs 3``.

    The default schedule (warm-up, then cosine decay to the end of max_epochs) is a function of max_epochs, so
    extending a finished fit changes it; with a flat learning rate nothing else differs.
    """
    whole, extended = tmp_path / "whole", tmp_path / "extended"
    assert main(["fit", *options(small_dataset, whole, 0, 3, *FLAT_SCHEDULE)]) == 0
    assert main(["fit", *options(small_dataset, extended, 0, 2, *FLAT_SCHEDULE)]) == 0
    assert main(["fit", *options(small_dataset, extended, 0, 3, *FLAT_SCHEDULE, "--ckpt_path", "last")]) == 0

    diff = differences(whole, extended)
    assert max(diff.values()) <= ATOL, f"extended vs uninterrupted, largest differences: {diff}"
