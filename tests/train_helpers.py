"""Helpers for the tests that run ``catdog fit``: the shipped configs, small generated datasets, options, CSV logs;
Lightning checkpoints of untrained models; the check of a freeze-then-unfreeze run."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = str(ROOT / "configs" / "scratch.yaml")
PRETRAINED = str(ROOT / "configs" / "pretrained.yaml")
CSV_ONLY = str(ROOT / "configs" / "logger" / "csv.yaml")
POUTYNE = str(ROOT / "configs" / "poutyne.yaml")


def fused_sample(root: Path, *, cat_train: int, cat_test: int, split_seed: int = 42, **sample: int) -> Path:
    """Generated Kaggle-layout sources (``generate(root / "kaggle", **sample)``) fused into ``root / "dataset"``.

    ``cat_train`` and ``cat_test`` cats (and the dogs of the breeds that fall to each side) under the split
    seed ``split_seed``; returns the dataset folder.
    """
    from catdog.data.fusion import fuse
    from catdog.data.sample_data import generate

    sources = generate(root / "kaggle", **sample)
    fuse(
        sources.cats_source,
        sources.dogs_source,
        root / "dataset",
        cat_train=cat_train,
        cat_test=cat_test,
        seed=split_seed,
        progress=False,
    )
    return root / "dataset"


def fit_options(
    data_dir: Path,
    run_dir: Path,
    *extra: str,
    image_size: int,
    max_epochs: int,
    batch_size: int | None = None,
    workers: int = 0,
    configs: Sequence[str] = (SCRATCH, CSV_ONLY),
) -> list[str]:
    """Options of ``catdog fit`` (and test, validate, predict) for a small run on the CPU without a progress bar.

    The ``configs`` come first, ``extra`` last (so it overrides what comes before); without ``batch_size``,
    the configs' batch size.
    """
    return [
        *(item for config in configs for item in ("-c", config)),
        "--data.data_dir", str(data_dir), "--data.image_size", str(image_size),
        *(["--data.batch_size", str(batch_size)] if batch_size is not None else []),
        "--data.num_workers", str(workers), "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_epochs", str(max_epochs), "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip


def logged(run_dir: Path, key: str) -> dict[int, float]:
    """``key`` by epoch from the CSV logs of every version under the run dir (a later version's value wins)."""
    values: dict[int, float] = {}
    for path in sorted(run_dir.glob("lightning_logs/version_*/metrics.csv")):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row.get(key):
                    values[int(row["epoch"])] = float(row[key])
    return values


def save_checkpoint(model: pl.LightningModule, path: Path) -> None:
    """``model`` as it is, untrained, in a Lightning checkpoint at ``path`` (its folder made if need be)."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        default_root_dir=path.parent,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(model)
    model.trainer = trainer
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)


def assert_head_only_then_everything_trains(
    start: dict[str, torch.Tensor],
    ends: list[dict[str, torch.Tensor]],
    trainable: list[set[str]],
    head: set[str],
) -> None:
    """A freeze-then-unfreeze run of two epochs (``freeze_backbone_epochs: 1``), from its parameters.

    ``start``: every parameter before training; ``ends[i]``: every parameter at the end of epoch ``i``;
    ``trainable[i]``: the names of the parameters that required a gradient during epoch ``i``; ``head``: the
    classifier's parameter names. In the first epoch only the head trains and every backbone parameter keeps
    its value exactly; in the second the backbone trains: every one of its parameters moves.
    """
    import torch

    backbone = set(start) - head
    assert head and backbone and head <= set(start)
    assert trainable[0] == head, "the first epoch should train the classifier head only"
    assert trainable[1] == set(start), "the second epoch should train every parameter"
    unchanged = [name for name in backbone if not torch.equal(ends[0][name], start[name])]
    assert not unchanged, f"frozen backbone parameters changed in the first epoch: {unchanged[:5]}"
    assert all(not torch.equal(ends[0][name], start[name]) for name in head), "the head did not train"
    still = sorted(name for name in backbone if torch.equal(ends[1][name], ends[0][name]))
    assert not still, f"{len(still)} of {len(backbone)} backbone parameters did not move once unfrozen: {still[:5]}"


def assert_pretrained_freeze_run(watch: Any, network: torch.nn.Module, weights: Path) -> None:
    """A two-epoch ``configs/pretrained.yaml`` run of ``network`` started from ``weights`` (a 1000-class file),
    from a ``ParameterWatch``'s record: head only, then everything trains; the backbone started from the file."""
    import torch

    head_ids = {id(p) for p in network.get_classifier().parameters()}
    head = {name for name, p in network.named_parameters() if id(p) in head_ids}
    assert_head_only_then_everything_trains(watch.start, watch.ends, watch.trainable, head)
    saved = torch.load(weights, weights_only=True)  # the head is new
    for name in set(watch.start) - head:
        torch.testing.assert_close(watch.start[name], saved[name], rtol=0, atol=0, msg=name)
