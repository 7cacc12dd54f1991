"""Several processes, GPUs or nodes: what ``catdog fit|validate|test|predict`` check and add for them.

* :class:`TimmSyncBatchNorm`: Lightning's ``LayerSync`` plugin for ``--trainer.sync_batchnorm true`` that keeps
  timm's ``BatchNormAct2d`` whole (normalisation, then its dropout and activation) through
  :func:`timm.layers.convert_sync_batchnorm`, and turns it back into ``BatchNormAct2d`` after the fit (torch's
  converter makes it a plain ``SyncBatchNorm`` and drops the activation).
* :func:`gather_rows`: every process's rows (test and validation predictions, the collapse warning's inputs)
  in rank order.
* :func:`check_trainer_devices`: the trainer settings that cannot work on this machine (a GPU asked for but
  absent; synchronised BatchNorm on the CPU, which torch refuses) as one clear error, before any process starts.

The data side (each process's share of the seeded training order, evaluation loaders that read every image once)
is :mod:`catdog.data.datamodule`'s; the prediction files made of gathered rows are
:mod:`catdog.training.callbacks`'.
See ``docs/distributed.md``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn

from catdog import CatDogError

#: What ``trainer.accelerator`` names a CUDA GPU by.
GPU_ACCELERATORS = ("gpu", "cuda")


class TimmSyncBatchNorm(TorchSyncBatchNorm):
    """``trainer.sync_batchnorm``: every BatchNorm layer synchronised across processes, timm's ``BatchNormAct2d``
    kept whole (``SyncBatchNormAct``); :meth:`revert` gives back ``BatchNormAct2d`` with the same state."""

    def apply(self, model: nn.Module) -> nn.Module:
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return super().revert(_revert_timm(model))


def _revert_timm(module: nn.Module) -> nn.Module:
    """``module`` with every timm ``SyncBatchNormAct`` back as a ``BatchNormAct2d`` sharing its parameters,
    buffers, activation and dropout (plain ``SyncBatchNorm`` layers are left to Lightning's revert)."""
    from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct

    converted = module
    if isinstance(module, SyncBatchNormAct):
        converted = BatchNormAct2d.__new__(BatchNormAct2d)
        converted.__dict__.update(module.__dict__)  # parameters, buffers, act and drop, settings
        converted.__dict__.pop("process_group", None)
    for name, child in module.named_children():
        converted.add_module(name, _revert_timm(child))
    return converted


def check_trainer_devices(trainer: Any) -> None:
    """Raise :class:`CatDogError` for trainer settings this machine cannot run (``trainer``: the config section)."""
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    has_gpu = torch.cuda.is_available()
    if accelerator in GPU_ACCELERATORS and not has_gpu:
        raise CatDogError(
            f"trainer.accelerator {accelerator}: no CUDA GPU is visible to torch (torch.cuda.is_available() is "
            "False; check nvidia-smi, CUDA_VISIBLE_DEVICES and that torch was built with CUDA); to run on the CPU "
            "pass --trainer.accelerator cpu"
        )
    if trainer.get("sync_batchnorm") and runs_on_cpu(trainer):
        raise CatDogError(
            "trainer.sync_batchnorm true: torch's SyncBatchNorm runs on GPUs only, and this run is on the CPU; "
            "leave it off (each process normalises its own batch; catdog averages the running statistics "
            "across processes before every validation, so every process evaluates the same model)"
        )


def runs_on_cpu(trainer: Any) -> bool:
    """Whether the trainer config section runs on the CPU (``cpu``, or ``auto`` without a visible GPU)."""
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def timm_sync_batchnorm_plugin() -> dict[str, Any]:
    """The config entry of :class:`TimmSyncBatchNorm` for ``trainer.plugins``."""
    return {"class_path": f"{__name__}.{TimmSyncBatchNorm.__name__}"}


def gather_rows(trainer: Any, rows: list[Any]) -> list[Any]:
    """Every process's ``rows``, concatenated in rank order (``rows`` itself in a run of one process).

    Each process may hold a different number of rows (the evaluation loaders' shares differ by one image at
    most); every process must call this, since it is a collective operation.
    """
    if trainer.world_size == 1:
        return list(rows)
    gathered: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, list(rows))
    return [row for part in gathered for row in part]
