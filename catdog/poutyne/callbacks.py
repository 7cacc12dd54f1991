"""Poutyne callbacks of ``catdog poutyne``: saving and uploading the model, the per-step schedule, backbone freeze.

* :class:`SaveModel` saves the network after a chosen epoch and uploads it with :func:`upload_file`
  (fsspec: ``file://``, ``memory://``, ``gs://`` with gcsfs, ``s3://`` with s3fs); a failed upload is
  reported and training goes on.
* :class:`StepScheduler` steps a torch LR scheduler after every optimizer step (Lightning's
  ``interval: step``).
* :class:`FreezeBackbone` trains only the classifier head during the first epochs (as
  :class:`catdog.training.module.CatDogClassifier`).
* :class:`RecalibrateBatchNorm` re-estimates the BatchNorm statistics before early validations (as
  :class:`catdog.training.module.CatDogClassifier`).
* :class:`EpochSeeds` reseeds every epoch from (run seed, epoch), with :class:`catdog.training.callbacks.EpochSeeds`.
* :class:`LightningIterationOrder` makes the loaders' iterators when Lightning's loops do.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from poutyne import Callback

from catdog import CatDogError

#: A URI ending with one of these names the destination file itself, not a folder.
MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


def upload_file(local_path: str | os.PathLike[str], uri: str) -> str:
    """Copy ``local_path`` to ``uri`` with fsspec and return the full destination URI.

    ``uri`` names a folder (the file keeps its name) unless it ends with a model suffix
    (``.pth``, ``.pt``, ``.ckpt``, ...), in which case it is the destination file itself. Raises whatever
    fsspec raises (unknown protocol, missing gcsfs/s3fs, permissions, network).
    """
    import fsspec

    local_path = Path(local_path)
    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    dest = root if root.endswith(MODEL_SUFFIXES) else f"{root}/{local_path.name}"
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    parent = dest.rsplit("/", 1)[0] if "/" in dest else ""
    if parent and protocols & {"file", "local"}:  # object stores have no folders (and must not make buckets)
        fs.makedirs(parent, exist_ok=True)
    fs.put_file(str(local_path), dest)
    return fs.unstrip_protocol(dest)


def upload_hint(uri: str, err: BaseException) -> str:
    """How to fix a failed upload to ``uri``, from the kind of error."""
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    if isinstance(err, ImportError):
        package = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}.get(protocol)
        return f"install the fsspec backend for {protocol}:// (pip install {package or '<its package>'})"
    if isinstance(err, ValueError) and "protocol" in str(err).lower():
        return "use a URI fsspec knows: file://, memory://, gs:// (gcsfs) or s3:// (s3fs)"
    if isinstance(err, PermissionError):
        return "check that the destination is writable (credentials for cloud storage)"
    return "check the destination and the credentials"


def check_save_model_epoch(epoch: int) -> None:
    """Refuse an epoch :class:`SaveModel` can never reach (epochs count from 1)."""
    if epoch < 1:
        raise CatDogError(f"poutyne.save_model_epoch must be at least 1 (epochs count from 1), got {epoch}")


class SaveModel(Callback):
    """Save the network's state dict after epoch ``epoch`` and upload it to ``upload_uri``.

    The file is ``<directory>/model_epoch<N>.pth`` (a timm state dict with the 2-class head). When
    training stops before ``epoch`` (end of the run, or early stopping: place SaveModel after
    EarlyStopping) the network of the last epoch is saved instead. An upload failure is
    printed (with the reason and a fix) and recorded in :attr:`upload_error`; training continues and the
    local file stays.
    """

    def __init__(self, directory: str | os.PathLike[str], epoch: int = 1, upload_uri: str | None = None) -> None:
        super().__init__()
        check_save_model_epoch(epoch)
        self.directory = Path(directory)
        self.epoch = epoch
        self.upload_uri = upload_uri or None
        self.saved_path: Path | None = None
        self.uploaded_to: str | None = None
        self.upload_error: str | None = None

    def on_epoch_end(self, epoch_number: int, logs: dict) -> None:
        planned = (self.params or {}).get("epochs", epoch_number + 1)
        last_epoch = getattr(self.model, "stop_training", False) or epoch_number >= planned
        if epoch_number == self.epoch or (self.saved_path is None and last_epoch):
            if epoch_number != self.epoch:
                print(f"training ends at epoch {epoch_number}, before save_model_epoch {self.epoch}: saving it now")
            self.save(epoch_number)

    def save(self, epoch_number: int) -> Path:
        """Write the network's state dict for ``epoch_number`` (atomically) and upload it when asked."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"model_epoch{epoch_number}.pth"
        partial = path.with_name(path.name + ".tmp")
        torch.save(self.model.network.state_dict(), partial)
        partial.replace(path)
        self.saved_path = path
        print(f"model after epoch {epoch_number} saved to {path}")
        if self.upload_uri:
            self._upload(path, self.upload_uri)
        return path

    def _upload(self, path: Path, uri: str) -> None:
        try:
            self.uploaded_to = upload_file(path, uri)
        except Exception as err:  # noqa: BLE001 - any backend error must leave training running
            reason = str(err).splitlines()[0] if str(err) else ""
            self.upload_error = (
                f"upload of {path.name} to {uri} failed ({type(err).__name__}: {reason}); "
                f"{upload_hint(uri, err)}. Training continues; the model is kept at {path}"
            )
            print(f"warning: {self.upload_error}", file=sys.stderr)
        else:
            print(f"model uploaded to {self.uploaded_to}")


class StepScheduler(Callback):
    """Step a PyTorch LR scheduler after every optimizer step (as Lightning's ``interval: step``)."""

    def __init__(self, scheduler: Any) -> None:
        super().__init__()
        self.scheduler = scheduler

    def on_train_batch_end(self, batch_number: int, logs: dict) -> None:
        self.scheduler.step()


class FreezeBackbone(Callback):
    """Train only the classifier during the first ``epochs`` epochs (as ``CatDogClassifier``)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch_number: int, logs: dict) -> None:
        from catdog.training.network import set_backbone_trainable

        set_backbone_trainable(self.model.network, trainable=epoch_number > self.epochs)


class RecalibrateBatchNorm(Callback):
    """Before each validation, re-estimate the BatchNorm statistics on training batches (as ``CatDogClassifier``).

    Runs while fewer than ``max_steps`` optimizer steps have been taken, on up to ``max_batches`` batches of
    ``loader`` (the training loader), through :func:`catdog.training.batchnorm.recalibrate_batchnorm`;
    0 batches never runs.
    """

    def __init__(self, loader: Any, max_batches: int, max_steps: int, device: str | None = None) -> None:
        super().__init__()
        self.loader, self.max_batches, self.max_steps, self.device = loader, max_batches, max_steps, device
        self.steps = 0

    def on_train_batch_end(self, batch_number: int, logs: dict) -> None:
        self.steps += 1

    def on_valid_begin(self, logs: dict) -> None:
        if self.max_batches <= 0 or self.steps >= self.max_steps:
            return
        from catdog.training.batchnorm import recalibrate_batchnorm

        device = torch.device(self.device or "cpu")
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # as CatDogClassifier
            recalibrate_batchnorm(self.model.network, self.loader, self.max_batches, device=self.device)


class EpochSeeds(Callback):
    """Reseed torch, numpy and ``random`` at the start of every epoch as ``catdog fit`` does.

    The reseeding is :meth:`catdog.training.callbacks.EpochSeeds.reseed` with the 0-based epoch number, so both
    trainers draw the same augmentation and dropout per epoch.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        from catdog.training.callbacks import EpochSeeds as LightningEpochSeeds

        self.lightning = LightningEpochSeeds(seed)

    def on_epoch_begin(self, epoch_number: int, logs: dict) -> None:
        self.lightning.reseed(epoch_number - 1)


class LightningIterationOrder(Callback):
    """A data loader whose iterators are made, and whose sampler is told the epoch, when Lightning's loops do it.

    Lightning's fit loop makes the first epoch's training iterator when training starts, before the first
    ``on_train_epoch_start`` (where :class:`EpochSeeds` reseeds), and its validation loop makes the validation
    iterator before ``on_validation_start`` (where the BatchNorm statistics are re-estimated); Poutyne makes
    each when the first batch is read. Making an iterator draws from the loader's generator (the training
    loader's :class:`catdog.data.EpochSampler` has its own; other loaders use torch's global one), so, passed
    both as Poutyne's data and as a callback, this makes ``"train"`` data's first iterator at ``on_train_begin``
    and every ``"valid"`` iterator at ``on_valid_begin``: both trainers draw the same random numbers in the
    same order. Like Lightning's loops, it calls the sampler's ``set_epoch`` with the 0-based epoch before each
    epoch (``"train"``) or validation (``"valid"``), so the training order is the epoch's.
    """

    def __init__(self, loader: Any, stage: str) -> None:
        super().__init__()
        if stage not in ("train", "valid"):
            raise ValueError(f"stage must be 'train' or 'valid', got {stage!r}")
        self.loader, self.stage = loader, stage
        self._made: Any = None
        self._epoch = 0

    def _set_sampler_epoch(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(self._epoch)

    def on_train_begin(self, logs: dict) -> None:
        if self.stage == "train":
            self._made = iter(self.loader)

    def on_epoch_begin(self, epoch_number: int, logs: dict) -> None:
        self._epoch = epoch_number - 1
        if self.stage == "train":
            self._set_sampler_epoch()

    def on_valid_begin(self, logs: dict) -> None:
        if self.stage == "valid":
            self._set_sampler_epoch()
            self._made = iter(self.loader)

    def __iter__(self) -> Any:
        made, self._made = self._made, None
        return made if made is not None else iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)
