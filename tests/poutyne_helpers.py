"""Helpers for the Poutyne trainer tests: the tiny test network, the options of a 32 px CPU run, weight comparison."""

from __future__ import annotations

from pathlib import Path

import torch
from train_helpers import CSV_ONLY, POUTYNE, SCRATCH

MODEL = "test_efficientnet"  # a ~0.1M-parameter timm test network: fast on CPU


def shared(dataset: Path, *extra: str, config: tuple[str, ...] = (SCRATCH,)) -> list[str]:
    """Options both `catdog fit` and `catdog poutyne` read: a tiny 32 px run on the CPU."""
    return [
        *(item for path in config for item in ("-c", path)), "-c", CSV_ONLY,
        "--data.data_dir", str(dataset), "--data.image_size", "32", "--data.batch_size", "16",
        "--data.num_workers", "0", "--model.model_name", MODEL, "--trainer.accelerator", "cpu", *extra,
    ]  # fmt: skip


def poutyne_args(dataset: Path, run_dir: Path, *extra: str, config: tuple[str, ...] = (SCRATCH,)) -> list[str]:
    return [
        *shared(dataset, config=config), "-c", POUTYNE, "--poutyne.run_dir", str(run_dir),
        "--poutyne.wandb", "false", "--poutyne.verbose", "false", *extra,
    ]  # fmt: skip


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=atol) for k in a)
