"""``catdog fit | validate | test | predict``: the LightningCLI of :class:`~catdog.training.module.CatDogClassifier`
and :class:`~catdog.data.CatDogDataModule`.

Typical use::

    catdog fit  -c configs/scratch.yaml            # + -c configs/pretrained.yaml --model.pretrained_file W
    catdog test -c configs/scratch.yaml --ckpt_path best     # best | last | PATH; default best
    catdog fit  -c configs/scratch.yaml --ckpt_path last     # resume: the epoch count continues
    catdog fit  -c configs/scratch.yaml -c configs/trainer/ddp.yaml   # DDP (GPUs, nodes): docs/distributed.md
    catdog fit  -c configs/scratch.yaml -c configs/trainer/gpu.yaml   # the GPU recipe (bf16, channels_last, ...)
    catdog fit  -c configs/scratch.yaml --print_config      # the full, resolved configuration

Everything a run writes lives under its **run dir**, ``trainer.default_root_dir`` (``runs/scratch`` and
``runs/pretrained`` in the shipped configs):

* ``<run dir>/checkpoints/best.ckpt`` (lowest ``val_loss``) and ``<run dir>/checkpoints/last.ckpt`` (the
  final completed epoch: a second ModelCheckpoint without a monitor, saved every epoch), both overwritten,
  never versioned; any ModelCheckpoint in the config without a ``dirpath`` gets this folder;
* ``<run dir>/predictions.csv`` (test split: file relative to the dataset root, label, P(dog)) and
  ``<run dir>/metrics.json`` computed from it, written by ``test`` (:class:`catdog.training.callbacks.RunRecorder`;
  schema :class:`catdog.metrics.RunMetrics`, framework ``lightning``), which ``catdog report`` collects;
* ``<run dir>/predict.csv`` written by ``predict`` (:class:`catdog.training.callbacks.PredictionWriter`);
* ``<run dir>/lightning_logs/version_N/`` (CSV logs + the resolved ``config.yaml``) and
  ``<run dir>/wandb/`` (offline W&B run; ``WANDB_MODE`` defaults to ``offline``, no key needed): loggers in
  the config with an empty ``save_dir`` get the run dir. Add ``-c configs/logger/csv.yaml`` for CSV only.

``--ckpt_path best`` / ``last`` resolve to the files above (for ``fit``, ``last`` resumes when it exists
and starts fresh otherwise). ``test``/``validate``/``predict`` without ``--ckpt_path`` use ``best.ckpt``
when it exists.

A small run from Python, as ``catdog demo`` does it (paths and numbers are the caller's)::

    from catdog.cli import main
    common = ["-c", "configs/scratch.yaml", "--data.data_dir", "dataset", "--data.image_size", "64",
              "--trainer.default_root_dir", "runs/demo-scratch"]
    main(["fit", *common, "--trainer.max_epochs", "3"])     # -> runs/demo-scratch/checkpoints/{best,last}.ckpt
    main(["test", *common, "--ckpt_path", "best"])          # -> runs/demo-scratch/{predictions.csv,metrics.json}

Useful extra overrides: ``--data.batch_size``, ``--data.num_workers``, ``--trainer.limit_train_batches N``,
``--trainer.accelerator cpu``, ``--model.pretrained_file PATH`` (with ``-c configs/pretrained.yaml``),
``--data.val_files FILE`` (a validation file list, see :mod:`catdog.data.splits`),
``--trainer.precision bf16-mixed``, ``--seed_everything N``. ``data.image_size`` is linked to
``model.image_size`` (set the first); the data module normalises images as the built model says
(``model.preprocess_config``: mean, std, interpolation and crop of the timm model).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from catdog import CatDogError
from catdog.config_files import resolve_config_args
from catdog.data import CatDogDataModule
from catdog.training.distributed import check_trainer_devices, runs_on_cpu, timm_sync_batchnorm_plugin
from catdog.training.module import CatDogClassifier

SUBCOMMANDS = ("fit", "validate", "test", "predict")
CHECKPOINT_DIRNAME = "checkpoints"
BEST_NAME, LAST_NAME = "best", "last"
DEFAULT_RUN_DIR = "runs/default"


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where ``fit`` writes ``best.ckpt`` and ``last.ckpt`` for a run dir."""
    return Path(run_dir) / CHECKPOINT_DIRNAME


class CatDogCLI(LightningCLI):
    """LightningCLI with catdog's data/model links and run-dir conventions (see the module docstring)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.image_size", "model.image_size")
        # The data module normalises as the model it feeds: its timm data config, once the model is built.
        parser.link_arguments("model.preprocess_config", "data.preprocess", apply_on="instantiate")
        parser.set_defaults({"trainer.default_root_dir": DEFAULT_RUN_DIR})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_trainer_devices(config.trainer)
        _add_sync_batchnorm_plugin(config.trainer)
        if runs_on_cpu(config.trainer) and config.data.get("pin_memory"):
            config.data.pin_memory = False  # pinned memory only speeds up copies to a GPU
            print("data.pin_memory: off on the CPU (it speeds up copies to a GPU)")
        run_dir = Path(config.trainer.default_root_dir or DEFAULT_RUN_DIR)
        config.trainer.default_root_dir = str(run_dir)
        for callback in _as_list(config.trainer.get("callbacks")):
            if _class_name(callback) == "ModelCheckpoint" and not callback.init_args.get("dirpath"):
                callback.init_args.dirpath = str(checkpoint_dir(run_dir))
        for logger in _as_list(config.trainer.get("logger")):
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and "save_dir" in init_args and not init_args.save_dir:
                init_args.save_dir = str(run_dir)
        if self.subcommand:
            config.ckpt_path = _resolve_ckpt_path(self.subcommand, config.get("ckpt_path"), run_dir)
            if config.ckpt_path:
                # Every weight comes from the checkpoint: the pretrained file is not needed (nor read).
                config.model.load_weights = False


def _add_sync_batchnorm_plugin(trainer: Any) -> None:
    """With ``trainer.sync_batchnorm``, add the plugin that keeps timm's BatchNormAct2d whole (unless the config
    names a LayerSync plugin of its own)."""
    if not trainer.get("sync_batchnorm"):
        return
    plugins = _as_list(trainer.get("plugins"))
    if not any(_class_name(plugin).endswith("SyncBatchNorm") for plugin in plugins):
        trainer.plugins = [*plugins, Namespace(timm_sync_batchnorm_plugin())]


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _class_name(item: Any) -> str:
    class_path = getattr(item, "class_path", None) or ""
    return class_path.rsplit(".", 1)[-1]


def _resolve_ckpt_path(subcommand: str, ckpt_path: str | None, run_dir: Path) -> str | None:
    """Map ``best``/``last`` (and a missing path outside ``fit``) to the run dir's checkpoint files."""
    folder = checkpoint_dir(run_dir)
    if ckpt_path is None:
        if subcommand == "fit":
            return None
        best = folder / f"{BEST_NAME}.ckpt"
        if best.is_file():
            print(f"using {best} (pass --ckpt_path to choose another checkpoint)")
            return str(best)
        print(f"warning: no checkpoint in {folder}; {subcommand} uses the model as configured", file=sys.stderr)
        return None
    if ckpt_path in (BEST_NAME, LAST_NAME):
        path = folder / f"{ckpt_path}.ckpt"
        if path.is_file():
            return str(path)
        if subcommand == "fit" and ckpt_path == LAST_NAME:
            print(f"no {path} yet: starting a new run")
            return None
        raise CatDogError(
            f"--ckpt_path {ckpt_path}: {path} does not exist; train first with `catdog fit` using the same "
            "config and trainer.default_root_dir, or pass --ckpt_path PATH"
        )
    if not Path(ckpt_path).is_file():
        raise CatDogError(f"--ckpt_path {ckpt_path}: file not found (use best, last or the path of a .ckpt file)")
    return ckpt_path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the LightningCLI; ``argv[0]`` is the subcommand (fit, validate, test or predict)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in SUBCOMMANDS:
        raise CatDogError(f"the first argument must be one of {', '.join(SUBCOMMANDS)}, got {args[:1]}")
    args = [args[0], *resolve_config_args(args[1:])]  # -c scratch: a packaged config (catdog.config_files)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    # ``args`` is always passed explicitly (the console script hands over sys.argv[1:] itself).
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        CatDogCLI(
            CatDogClassifier,
            CatDogDataModule,
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
            load_from_checkpoint_support=False,
            args=args,
        )
    except SystemExit as exit_:  # --help, --print_config and argument errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    return 0
