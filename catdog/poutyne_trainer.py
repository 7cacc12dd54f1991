"""``catdog poutyne``: the Poutyne parity trainer.

The same network (:func:`catdog.model.build_network`), data (:class:`catdog.data.CatDogDataModule`),
loss (cross-entropy with label smoothing), optimizer and schedule (:func:`catdog.model.build_optimizer`)
as the Lightning path, trained with ``poutyne.Model.fit_generator`` and Poutyne's own callbacks:

* ``EarlyStopping`` (``monitor``, ``patience``, ``min_delta``);
* ``ModelCheckpoint``: ``checkpoints/best.ckpt`` (best ``val_acc``, restored before testing) and
  ``checkpoints/last.ckpt``; both hold the network's state dict, so ``build_network(...,
  pretrained_file=...)`` and ``catdog poutyne --pretrained_file`` read them back;
* ``CSVLogger`` (``history.csv``; ``history.json`` is written from the returned history too);
* ``WandBLogger`` on a W&B run under the run dir (``WANDB_MODE`` defaults to ``offline``: no key needed);
* :class:`SaveModel`: saves the network after a chosen epoch (default the first) to ``saved/`` and uploads it
  through fsspec to ``upload_uri`` (``file://``, ``memory://``, ``gs://`` with gcsfs, ``s3://`` with s3fs).
  A failed upload is reported and training goes on; the local copy stays.

After training, the test split is evaluated and ``metrics.json`` is written with the shared schema
(:mod:`catdog.metrics`, framework ``poutyne``), so ``catdog report`` lists it beside the Lightning runs.

Usage::

    catdog poutyne -c configs/poutyne.yaml [--data_dir dataset] [--epochs 5] [--upload_uri gs://bucket/catdog]
    catdog poutyne -c configs/poutyne.yaml --pretrained_file weights/tf_efficientnetv2_b2.pth --name pretrained
    catdog poutyne --help            # every option; --print_config shows the resolved configuration

Everything a run writes is under ``<out_dir>/<name>/`` (default ``runs/poutyne/scratch``, or
``runs/poutyne/pretrained`` with pretrained weights): ``checkpoints/{best,last}.ckpt``, ``history.csv``,
``history.json``, ``saved/model_epoch<N>.pth``, ``metrics.json``, ``wandb/``.

From Python: ``run = train_poutyne(data_dir="dataset", image_size=64, epochs=2)`` returns a
:class:`PoutyneRun`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# This module is imported only by `catdog poutyne` (and tests/benchmarks), which need torch anyway.
import torch
from poutyne import Callback
from torch import nn
from torch.nn import functional as F

from catdog import CatDogError

DEFAULT_MODEL = "tf_efficientnetv2_b2"
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


def _upload_hint(uri: str, err: BaseException) -> str:
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    if isinstance(err, ImportError):
        package = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}.get(protocol)
        return f"install the fsspec backend for {protocol}:// (pip install {package or '<its package>'})"
    if isinstance(err, ValueError) and "protocol" in str(err).lower():
        return "use a URI fsspec knows: file://, memory://, gs:// (gcsfs) or s3:// (s3fs)"
    if isinstance(err, PermissionError):
        return "check that the destination is writable (credentials for cloud storage)"
    return "check the destination and the credentials"


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
        if epoch < 1:
            raise CatDogError(f"save_model_epoch must be at least 1 (epochs count from 1), got {epoch}")
        self.directory = Path(directory)
        self.epoch = epoch
        self.upload_uri = upload_uri or None
        self.saved_path: Path | None = None
        self.uploaded_to: str | None = None
        self.upload_error: str | None = None

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
            self._upload(path)
        return path

    def _upload(self, path: Path) -> None:
        assert self.upload_uri is not None
        try:
            self.uploaded_to = upload_file(path, self.upload_uri)
        except Exception as err:  # noqa: BLE001 - any backend error must leave training running
            reason = str(err).splitlines()[0] if str(err) else ""
            self.upload_error = (
                f"upload of {path.name} to {self.upload_uri} failed ({type(err).__name__}: {reason}); "
                f"{_upload_hint(self.upload_uri, err)}. Training continues; the model is kept at {path}"
            )
            print(f"warning: {self.upload_error}", file=sys.stderr)
        else:
            print(f"model uploaded to {self.uploaded_to}")

    def on_epoch_end(self, epoch_number: int, logs: dict) -> None:
        planned = (self.params or {}).get("epochs", epoch_number + 1)
        last_epoch = getattr(self.model, "stop_training", False) or epoch_number >= planned
        if epoch_number == self.epoch or (self.saved_path is None and last_epoch):
            if epoch_number != self.epoch:
                print(f"training ends at epoch {epoch_number}, before save_model_epoch {self.epoch}: saving it now")
            self.save(epoch_number)


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
        from catdog.model import set_backbone_trainable

        set_backbone_trainable(self.model.network, trainable=epoch_number > self.epochs)


class TrainingSmoothedCrossEntropy(nn.Module):
    """Cross-entropy with label smoothing while training, plain for evaluation (as ``CatDogClassifier``).

    Poutyne uses one loss for training and validation; Lightning smooths only the training loss, so
    ``val_loss`` (watched by early stopping) is the plain cross-entropy in both. Poutyne evaluates with
    gradients disabled, which is what tells the two apart here.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        smoothing = self.label_smoothing if torch.is_grad_enabled() else 0.0
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)


@dataclass
class PoutyneRun:
    """What :func:`train_poutyne` produced."""

    run_dir: Path
    history: list[dict[str, float]]
    metrics: Any  # catdog.metrics.RunMetrics
    metrics_path: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history_csv: Path
    history_json: Path
    saved_model: Path | None = None
    uploaded_to: str | None = None
    upload_error: str | None = None
    stopped_early: bool = False
    test_loss: float = float("nan")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other values are checked and returned."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CatDogError(f"device {device!r}: no CUDA GPU is visible; use --device cpu (or auto)")
    try:
        torch.device(device)
    except RuntimeError as err:
        raise CatDogError(f"device {device!r}: not a torch device ({err}); use auto, cpu or cuda[:N]") from err
    return device


def make_model(network: torch.nn.Module, optimizer: Any, loss: Any, device: str = "cpu") -> Any:
    """The ``poutyne.Model`` both the trainer and the benchmark use (batch metric: accuracy, in percent)."""
    from poutyne import Model

    return Model(network, optimizer, loss, batch_metrics=["accuracy"], device=device)


def evaluate(model: Any, loader: Any, verbose: bool = False) -> dict[str, Any]:
    """Loss, accuracy, F1, AUROC and confusion matrix of ``model`` on ``loader`` (torchmetrics, as Lightning)."""
    import torchmetrics

    from catdog.model import binary_metrics

    loss, _acc, logits, targets = model.evaluate_generator(
        loader, return_pred=True, return_ground_truth=True, convert_to_numpy=False, verbose=verbose
    )
    logits = torch.as_tensor(logits).float().cpu()
    targets = torch.as_tensor(targets).long().cpu()
    dog_prob = logits.softmax(dim=1)[:, 1]
    metrics = binary_metrics()
    confusion = torchmetrics.classification.BinaryConfusionMatrix()
    results = metrics(dog_prob, targets)
    matrix = confusion(dog_prob, targets).tolist()
    return {
        "loss": float(loss),
        "accuracy": float(results["acc"]),
        "f1": float(results["f1"]),
        "auroc": float(results["auroc"]),
        "confusion_matrix": [[int(v) for v in row] for row in matrix],
    }


def _start_wandb(run_dir: Path, name: str, project: str, config: dict[str, Any]) -> Any:
    """A W&B run in ``run_dir/wandb`` (offline unless WANDB_MODE says otherwise), or None if wandb is missing."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
    except ImportError:
        print("warning: wandb is not installed; the W&B logger is skipped", file=sys.stderr)
        return None
    return wandb.init(
        project=project,
        name=f"poutyne-{name}",
        dir=str(run_dir),
        config=config,
        mode=os.environ["WANDB_MODE"],
        reinit="finish_previous",
    )


@dataclass
class PoutyneSetup:
    """A ``poutyne.Model`` ready to train, with the data module and the per-step LR scheduler it goes with."""

    model: Any  # poutyne.Model
    network: torch.nn.Module
    datamodule: Any  # catdog.data.CatDogDataModule, set up for "fit"
    scheduler: Any  # torch LambdaLR: step it after every optimizer step (StepScheduler does)


def prepare(
    data_dir: str | os.PathLike[str],
    model_name: str = DEFAULT_MODEL,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    image_size: int = 224,
    batch_size: int = 32,
    val_fraction: float = 0.15,
    num_workers: int = 2,
    augment_scale: tuple[float, float] = (0.6, 1.0),
    epochs: int = 30,
    steps_per_epoch: int | None = None,
    lr: float = 0.002,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1.0,
    min_lr_ratio: float = 0.01,
    label_smoothing: float = 0.1,
    drop_rate: float = 0.2,
    seed: int = 42,
    device: str = "cpu",
) -> PoutyneSetup:
    """Seed, build the network, data module, loss, optimizer and schedule as the Lightning path does.

    The order matches a LightningCLI run (seed, then model, then data), so from the same seed and weights
    both paths see the same batches. Arguments as in :func:`train_poutyne`.
    """
    import lightning

    from catdog.data import CatDogDataModule
    from catdog.model import build_network, build_optimizer, preprocess_config_for

    lightning.seed_everything(seed, verbose=False)
    uses_weights = bool(pretrained or pretrained_file)
    network = build_network(model_name, pretrained=uses_weights, pretrained_file=pretrained_file, drop_rate=drop_rate)
    datamodule = CatDogDataModule(
        data_dir,
        image_size=image_size,
        batch_size=batch_size,
        val_fraction=val_fraction,
        num_workers=num_workers,
        pin_memory=str(device).startswith("cuda"),
        seed=seed,
        model_name=model_name,
        augment_scale=augment_scale,
        preprocess=preprocess_config_for(network, image_size),
    )
    datamodule.setup("fit")
    batches = len(datamodule.train_dataloader())
    per_epoch = min(batches, steps_per_epoch) if steps_per_epoch else batches
    optimizer, scheduler = build_optimizer(
        network,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        min_lr_ratio=min_lr_ratio,
        total_steps=per_epoch * epochs,
        epochs=epochs,
    )
    loss = TrainingSmoothedCrossEntropy(label_smoothing)
    return PoutyneSetup(make_model(network, optimizer, loss, device=device), network, datamodule, scheduler)


def train_poutyne(
    data_dir: str = "dataset",
    model_name: str = DEFAULT_MODEL,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    image_size: int = 224,
    batch_size: int = 32,
    val_fraction: float = 0.15,
    num_workers: int = 2,
    augment_scale: tuple[float, float] = (0.6, 1.0),
    epochs: int = 30,
    steps_per_epoch: int | None = None,
    lr: float = 0.002,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1.0,
    min_lr_ratio: float = 0.01,
    label_smoothing: float = 0.1,
    drop_rate: float = 0.2,
    freeze_backbone_epochs: int = 0,
    seed: int = 42,
    out_dir: str = "runs/poutyne",
    name: str | None = None,
    monitor: Literal["val_loss", "val_acc"] = "val_loss",
    patience: int = 8,
    min_delta: float = 0.0,
    save_model_epoch: int = 1,
    upload_uri: str | None = None,
    device: str = "auto",
    wandb: bool = True,
    wandb_project: str = "catdog",
    verbose: bool = True,
) -> PoutyneRun:
    """Train on ``data_dir`` with Poutyne, test, and write ``<out_dir>/<name>/metrics.json``.

    Args:
        data_dir: fused dataset with ``train/{cat,dog}`` and ``test/{cat,dog}`` (``catdog fuse``).
        model_name: any timm model name.
        pretrained: start from ImageNet weights (``pretrained_file`` or the hub cache).
        pretrained_file: local weights file (timm state dict or a catdog checkpoint); implies ``pretrained``.
        image_size: input size in pixels.
        batch_size: images per batch.
        val_fraction: part of ``train/`` held out for validation (stratified, seeded with ``seed``).
        num_workers: data loader worker processes.
        augment_scale: area range of the training random resized crop.
        epochs: maximum number of epochs.
        steps_per_epoch: limit the batches per epoch (default: the whole training split).
        lr: peak AdamW learning rate, reached after the warm-up.
        weight_decay: AdamW weight decay (not on biases and norms).
        warmup_epochs: linear warm-up length in epochs (at most half the run), then cosine decay.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        label_smoothing: label smoothing of the training loss (val_loss is plain cross-entropy, as in Lightning).
        drop_rate: dropout before the classifier.
        freeze_backbone_epochs: train only the classifier for this many epochs first.
        seed: seed of everything (weights of a fresh head, shuffling, augmentation, validation split).
        out_dir: parent folder of the run folders.
        name: run folder name (default ``pretrained`` or ``scratch``).
        monitor: quantity early stopping watches (``val_loss``: lower is better; ``val_acc``: higher).
        patience: epochs without improvement before early stopping.
        min_delta: smallest change of ``monitor`` counted as an improvement (``val_acc`` is in percent).
        save_model_epoch: the epoch after which SaveModel saves (and uploads) the network.
        upload_uri: fsspec URI (folder, or file ending in .pth) the saved model is uploaded to.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        wandb: log to Weights & Biases (offline unless ``WANDB_MODE`` says otherwise).
        wandb_project: W&B project name.
        verbose: show Poutyne's progress output.
    """
    config = dict(locals())  # the arguments, logged to W&B
    import poutyne

    from catdog.metrics import RunMetrics, write_metrics
    from catdog.model import count_parameters

    if epochs < 1:
        raise CatDogError(f"epochs must be at least 1, got {epochs}")
    if patience < 0:
        raise CatDogError(f"patience must be >= 0, got {patience}")
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise CatDogError(f"steps_per_epoch must be at least 1 (or null for the whole split), got {steps_per_epoch}")
    if save_model_epoch < 1:
        raise CatDogError(f"save_model_epoch must be at least 1 (epochs count from 1), got {save_model_epoch}")
    if not Path(data_dir).is_dir():
        raise CatDogError(
            f"data_dir {data_dir}: folder not found; create it with `catdog fuse ... --out {data_dir}` "
            "(or `catdog sample-data` then `catdog fuse` for generated data)"
        )
    uses_weights = bool(pretrained or pretrained_file)
    run_dir = Path(out_dir) / (name or ("pretrained" if uses_weights else "scratch"))
    device = resolve_device(device)

    setup = prepare(
        data_dir,
        model_name=model_name,
        pretrained=uses_weights,
        pretrained_file=pretrained_file,
        image_size=image_size,
        batch_size=batch_size,
        val_fraction=val_fraction,
        num_workers=num_workers,
        augment_scale=augment_scale,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        min_lr_ratio=min_lr_ratio,
        label_smoothing=label_smoothing,
        drop_rate=drop_rate,
        seed=seed,
        device=device,
    )
    model, network, datamodule, scheduler = setup.model, setup.network, setup.datamodule, setup.scheduler
    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()

    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    best_ckpt, last_ckpt = ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt"
    history_csv, history_json = run_dir / "history.csv", run_dir / "history.json"
    for stale in (best_ckpt, last_ckpt):
        stale.unlink(missing_ok=True)
    save_model = SaveModel(run_dir / "saved", epoch=save_model_epoch, upload_uri=upload_uri)
    early_stopping = poutyne.EarlyStopping(
        monitor=monitor, mode="min" if monitor == "val_loss" else "max", patience=patience, min_delta=min_delta
    )
    callbacks: list[Any] = [
        StepScheduler(scheduler),
        poutyne.ModelCheckpoint(
            str(best_ckpt), monitor="val_acc", mode="max", save_best_only=True, restore_best=True, verbose=verbose
        ),
        poutyne.ModelCheckpoint(str(last_ckpt)),
        poutyne.CSVLogger(str(history_csv)),
        early_stopping,
        save_model,
    ]
    if freeze_backbone_epochs > 0:
        callbacks.insert(0, FreezeBackbone(freeze_backbone_epochs))
    wandb_run = _start_wandb(run_dir, run_dir.name, wandb_project, config) if wandb else None
    if wandb_run is not None:
        callbacks.append(poutyne.WandBLogger(experiment=wandb_run))

    total, trainable = count_parameters(network), count_parameters(network, trainable_only=True)
    print(
        f"poutyne: {model_name} ({'pretrained' if uses_weights else 'from scratch'}), {total:,} parameters "
        f"({trainable:,} trainable), input {image_size} px, {len(datamodule.train_set or [])} train / "
        f"{len(datamodule.val_set or [])} val images, device {device}, run dir {run_dir}"
    )
    try:
        started = time.perf_counter()
        history = model.fit_generator(
            train_loader,
            val_loader,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=verbose,
        )
        train_seconds = time.perf_counter() - started
        history = [{k: float(v) for k, v in row.items()} for row in history]
        history_json.write_text(json.dumps(history, indent=2) + "\n")

        datamodule.setup("test")
        results = evaluate(model, datamodule.test_dataloader(), verbose=verbose)
        metrics = RunMetrics(
            model=model_name,
            framework="poutyne",
            pretrained=uses_weights,
            accuracy=results["accuracy"],
            f1=results["f1"],
            auroc=results["auroc"],
            confusion_matrix=results["confusion_matrix"],
            num_params=total,
            epochs=len(history),
            train_seconds=round(train_seconds, 3),
            checkpoint=str(best_ckpt.resolve()) if best_ckpt.is_file() else None,
        )
        metrics_path = write_metrics(metrics, run_dir)
        if wandb_run is not None:
            wandb_run.summary.update({f"test_{k}": v for k, v in results.items() if k != "confusion_matrix"})
    finally:
        if wandb_run is not None:
            wandb_run.finish()
    print(
        f"test accuracy {metrics.accuracy:.4f}, f1 {metrics.f1:.4f}, auroc {metrics.auroc:.4f} after "
        f"{metrics.epochs} epoch(s); metrics written to {metrics_path}"
    )
    return PoutyneRun(
        run_dir=run_dir,
        history=history,
        metrics=metrics,
        metrics_path=metrics_path,
        best_checkpoint=best_ckpt,
        last_checkpoint=last_ckpt,
        history_csv=history_csv,
        history_json=history_json,
        saved_model=save_model.saved_path,
        uploaded_to=save_model.uploaded_to,
        upload_error=save_model.upload_error,
        stopped_early=len(history) < epochs,
        test_loss=results["loss"],
    )


def build_parser() -> Any:
    """The ``catdog poutyne`` argument parser: ``-c/--config`` YAML plus one flag per :func:`train_poutyne` argument."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="catdog poutyne",
        description="Train and test the cat/dog classifier with Poutyne (parity with the Lightning path).",
        default_env=False,
        exit_on_error=True,
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML file of options (configs/poutyne.yaml)")
    parser.add_function_arguments(train_poutyne, as_group=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``catdog poutyne``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    parser = build_parser()
    try:
        config = parser.parse_args(args)
    except SystemExit as exit_:  # --help, --print_config and argument errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    options = config.as_dict()
    options.pop("config", None)
    if options.get("augment_scale") is not None:
        options["augment_scale"] = tuple(options["augment_scale"])
    train_poutyne(**options)
    return 0
