"""The configuration of ``catdog poutyne``: the sections of ``catdog fit`` plus Poutyne's own, and the run plan.

``data:`` and ``model:`` are the arguments of :class:`catdog.data.CatDogDataModule` and
:class:`catdog.training.module.CatDogClassifier` (one default per setting: the classes'), ``seed_everything`` and
``trainer:`` parse exactly as for ``catdog fit``; ``poutyne:`` is :class:`PoutyneOptions`. :func:`plan_run`
turns a parsed configuration into a :class:`PoutynePlan`, a plain value checked before anything is built.
Of the ``trainer:`` section Poutyne reads ``max_epochs``, ``limit_train_batches``, ``limit_val_batches``,
``accelerator``, the ``patience``/``min_delta`` of its ``EarlyStopping`` callback and whether it has
``catdog.training.callbacks.EpochSeeds`` (reseeding every epoch); the rest is Lightning's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catdog import CatDogError
from catdog.config_files import resolve_config


@dataclass
class PoutyneOptions:
    """Poutyne's own settings: the ``poutyne:`` section of the configuration.

    Args:
        run_dir: folder of everything the run writes (default ``runs/poutyne/scratch`` or
            ``runs/poutyne/pretrained``).
        patience: epochs without a lower ``val_loss`` before early stopping; ``None`` takes the patience of the
            ``trainer.callbacks`` EarlyStopping (no early stopping without one).
        save_model_epoch: SaveModel saves (and uploads) the network after this epoch (or the last one run).
        upload_uri: fsspec URI (folder, or file ending in .pth) the saved model is uploaded to.
        wandb: log to Weights & Biases (offline unless ``WANDB_MODE`` says otherwise).
        wandb_project: W&B project name.
        verbose: Poutyne's progress output.
    """

    run_dir: str | None = None
    patience: int | None = None
    save_model_epoch: int = 1
    upload_uri: str | None = None
    wandb: bool = True
    wandb_project: str = "catdog"
    verbose: bool = True


@dataclass(frozen=True)
class PoutynePlan:
    """What a run will do, decided from the configuration before anything is built or written."""

    run_dir: Path
    seed: int
    epochs: int
    train_batches: int | float | None  # trainer.limit_train_batches: a count, a fraction, or None (all)
    val_batches: int | float | None  # trainer.limit_val_batches, likewise
    device: str
    patience: int | None  # None: no early stopping
    min_delta: float
    epoch_seeds: dict[str, Any] | None  # init_args of trainer.callbacks' EpochSeeds; None: no reseeding
    options: PoutyneOptions
    config: dict[str, Any] = field(default_factory=dict)  # the resolved configuration (logged to W&B)


def build_parser() -> Any:
    """The ``catdog poutyne`` parser: ``data:``, ``model:`` and ``trainer:`` as ``catdog fit``, plus ``poutyne:``."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning.pytorch import Trainer

    from catdog.data import CatDogDataModule
    from catdog.training.module import CatDogClassifier

    parser = ArgumentParser(
        prog="catdog poutyne",
        description="Train and test the cat/dog classifier with Poutyne, from the configs of `catdog fit`.",
        default_env=False,
    )

    class ConfigFile(ActionConfigFile):
        """``-c``: a file, or a packaged config's name (``-c scratch -c poutyne``; :mod:`catdog.config_files`)."""

        def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
            super().__call__(parser, cfg, resolve_config(values), option_string)

    parser.add_argument("-c", "--config", action=ConfigFile, help="YAML config(s): scratch, poutyne (names or files)")
    parser.add_argument("--seed_everything", type=int, default=42, help="seed of weights, shuffling, augmentation")
    parser.add_class_arguments(CatDogDataModule, "data", skip={"preprocess"})  # the model's (poutyne_trainer)
    parser.add_class_arguments(CatDogClassifier, "model")
    # The whole trainer section parses as it does for `catdog fit`; Poutyne reads only a few of its keys.
    parser.add_class_arguments(Trainer, "trainer", instantiate=False, fail_untyped=False, sub_configs=True)
    parser.add_class_arguments(PoutyneOptions, "poutyne", instantiate=False)
    # The links of `catdog fit` (catdog.training.cli.CatDogCLI); the data module gets the built model's preprocessing.
    parser.link_arguments("data.image_size", "model.image_size")
    return parser


def plan_run(config: Any) -> PoutynePlan:
    """Check the configuration and decide the run dir, epochs, batch limits, device and early stopping."""
    from catdog.poutyne.callbacks import check_save_model_epoch

    options = PoutyneOptions(**config.poutyne.as_dict())
    trainer = config.trainer
    epochs = trainer.max_epochs
    if epochs is None or epochs < 1:
        raise CatDogError(f"trainer.max_epochs must be at least 1 for catdog poutyne, got {epochs}")
    check_save_model_epoch(options.save_model_epoch)  # before anything is written
    check_one_process(trainer)
    data_dir = Path(config.data.data_dir)
    if not data_dir.is_dir():
        raise CatDogError(
            f"data.data_dir {data_dir}: folder not found; create it with `catdog fuse ... --out {data_dir}` "
            "(or `catdog sample-data` then `catdog fuse` for generated data)"
        )
    patience, min_delta = early_stopping_settings(trainer.callbacks)
    if options.patience is not None:
        if options.patience < 0:
            raise CatDogError(f"poutyne.patience must be >= 0 (or null), got {options.patience}")
        patience = options.patience
    uses_weights = bool(config.model.pretrained or config.model.pretrained_file)
    run_dir = Path(options.run_dir or f"runs/poutyne/{'pretrained' if uses_weights else 'scratch'}")
    return PoutynePlan(
        run_dir=run_dir,
        seed=int(config.seed_everything),
        epochs=int(epochs),
        train_batches=batch_limit(trainer.limit_train_batches, "trainer.limit_train_batches"),
        val_batches=batch_limit(trainer.limit_val_batches, "trainer.limit_val_batches"),
        device=resolve_device(trainer.accelerator),
        patience=patience,
        min_delta=min_delta,
        epoch_seeds=callback_args(trainer.callbacks, "EpochSeeds"),
        options=options,
        config=config.clone().as_dict(),
    )


def check_one_process(trainer: Any) -> None:
    """Refuse a ``trainer:`` section asking for several processes, devices or nodes: Poutyne trains in one."""
    strategy = str(trainer.get("strategy") or "auto")
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
    several = devices not in (None, "auto", 1, "1") and not (isinstance(devices, list) and len(devices) == 1)
    if "ddp" in strategy.lower() or "fsdp" in strategy.lower() or several or int(nodes) > 1:
        raise CatDogError(
            f"catdog poutyne trains in one process on one device, but the trainer config asks for strategy "
            f"{strategy!r}, devices {devices!r}, num_nodes {nodes}; leave out configs/trainer/ddp.yaml (and "
            "--trainer.devices/num_nodes) for catdog poutyne, or train on several devices with `catdog fit`"
        )


def callback_args(callbacks: Any, name: str) -> dict[str, Any] | None:
    """The ``init_args`` of the first ``trainer.callbacks`` entry whose class is ``name``; None without one."""
    items = callbacks if isinstance(callbacks, list | tuple) else [callbacks] if callbacks else []
    for item in items:
        class_path = str(getattr(item, "class_path", "") or "")
        if class_path.rsplit(".", 1)[-1] == name:
            init_args = getattr(item, "init_args", None)
            return init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
    return None


def early_stopping_settings(callbacks: Any) -> tuple[int | None, float]:
    """``(patience, min_delta)`` of the EarlyStopping in ``trainer.callbacks``; ``(None, 0.0)`` without one."""
    args = callback_args(callbacks, "EarlyStopping")
    if args is None:
        return None, 0.0
    return int(args.get("patience", 3)), float(args.get("min_delta", 0.0))


def batch_limit(value: int | float | None, name: str) -> int | float | None:
    """A ``limit_*_batches`` value as Lightning reads it: an int counts batches, a float is a fraction."""
    if value is None or (isinstance(value, float) and value == 1.0):
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value <= 0
        or (isinstance(value, float) and value > 1.0)
    ):
        raise CatDogError(f"{name} must be a positive number of batches or a fraction in (0, 1], got {value!r}")
    return value


def limit_batches(batches: int, limit: int | float | None) -> int:
    """How many of ``batches`` a :func:`batch_limit` value allows (at least one)."""
    if limit is None:
        return batches
    return min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))


def resolve_device(accelerator: Any) -> str:
    """``trainer.accelerator`` as a torch device: ``cpu``; ``gpu``/``cuda``; ``auto`` (a GPU when visible)."""
    import torch

    name = str(accelerator).lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name in {"gpu", "cuda"}:
        if not torch.cuda.is_available():
            raise CatDogError(f"trainer.accelerator {accelerator}: no CUDA GPU is visible; use cpu or auto")
        return "cuda"
    if name == "cpu":
        return "cpu"
    raise CatDogError(f"trainer.accelerator {accelerator!r}: catdog poutyne runs on cpu, gpu (cuda) or auto")
