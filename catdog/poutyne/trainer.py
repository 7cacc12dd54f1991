"""``catdog poutyne``: the Poutyne parity trainer.

It reads the same configuration as ``catdog fit``: the ``data:`` section builds
:class:`catdog.data.CatDogDataModule`, the ``model:`` section :class:`catdog.training.module.CatDogClassifier` (its
network, training loss and optimizer settings), ``seed_everything`` seeds everything, and of the
``trainer:`` section Poutyne reads ``max_epochs``, ``limit_train_batches``, ``limit_val_batches``,
``accelerator`` (``cpu``, ``gpu``/``cuda`` or ``auto``) and the ``patience``/``min_delta`` of its
``EarlyStopping`` callback; the other trainer keys are Lightning's own and are ignored. Poutyne's own
settings are the ``poutyne:`` section (:class:`PoutyneOptions`, ``configs/poutyne.yaml``)::

    catdog poutyne -c configs/scratch.yaml -c configs/poutyne.yaml [--data.data_dir dataset]
    catdog poutyne -c configs/scratch.yaml -c configs/pretrained.yaml -c configs/poutyne.yaml \\
        --model.pretrained_file weights/tf_efficientnetv2_b2.pth
    catdog poutyne ... --data.image_size 64 --model.lr 0.001 --trainer.max_epochs 3 --poutyne.upload_uri URI

The rules are Lightning's: the network is trained with the classifier's own losses (label smoothing for
training, plain cross-entropy for ``val_loss``), :func:`catdog.training.optim.build_optimizer`'s AdamW and per-step
schedule and the classifier's BatchNorm policy (momentum, statistics re-estimated before early validations);
epochs are reseeded as ``catdog.training.callbacks.EpochSeeds`` does when the trainer's callbacks hold it, the data
module's training sampler (:class:`catdog.data.EpochSampler`) is told each epoch as Lightning tells it, and the
loaders are iterated in Lightning's order, so from the same config both trainers reach the same weights.
``checkpoints/best.ckpt`` is the epoch of lowest ``val_loss``, ``checkpoints/last.ckpt`` the final completed
epoch (both hold the network's timm state dict). The test split is evaluated with the best weights:
``predictions.csv`` (:func:`catdog.metrics.write_predictions`) and ``metrics.json`` computed from it,
and the validation split with the same weights: ``val_predictions.csv`` (what ``catdog calibrate`` fits on).

A run writes under ``poutyne.run_dir`` (default ``runs/poutyne/scratch``, or ``runs/poutyne/pretrained``
with pretrained weights): ``config.yaml`` (the resolved configuration), ``val_files.txt`` (the validation
images), ``checkpoints/{best,last}.ckpt``, ``history.{csv,json}``, ``saved/model_epoch<N>.pth``,
``predictions.csv``, ``val_predictions.csv``, ``metrics.json`` and ``wandb/`` (offline unless ``WANDB_MODE``
says otherwise).

From Python: ``run = train_poutyne(["-c", "configs/scratch.yaml", "--data.data_dir", "dataset"])``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catdog.poutyne.callbacks import (
    EpochSeeds,
    FreezeBackbone,
    LightningIterationOrder,
    RecalibrateBatchNorm,
    SaveModel,
    StepScheduler,
)
from catdog.poutyne.config import PoutynePlan, build_parser, limit_batches, plan_run


@dataclass
class PoutyneSetup:
    """A ``poutyne.Model`` ready to train, with what it was built from."""

    model: Any  # poutyne.Model
    classifier: Any  # catdog.training.module.CatDogClassifier: the network, its loss and hyperparameters
    datamodule: Any  # catdog.data.CatDogDataModule, set up for "fit"
    scheduler: Any  # per-step LR scheduler (StepScheduler steps it)
    steps_per_epoch: int
    validation_steps: int | None

    @property
    def network(self) -> nn.Module:
        return self.classifier.network


@dataclass
class PoutyneRun:
    """What :func:`train_poutyne` produced."""

    run_dir: Path
    history: list[dict[str, float]]
    metrics: Any  # catdog.metrics.RunMetrics
    metrics_path: Path
    predictions_path: Path
    best_checkpoint: Path
    last_checkpoint: Path
    saved_model: Path | None = None
    uploaded_to: str | None = None
    upload_error: str | None = None
    stopped_early: bool = False


class ClassifierLoss(nn.Module):
    """The classifier's own losses: ``criterion`` (label smoothing) to train, ``eval_criterion`` to evaluate.

    Poutyne uses one loss function for training and validation; ``CatDogClassifier`` smooths only the
    training loss, so ``val_loss`` (the checkpoint rule) is the plain cross-entropy in both trainers. Poutyne
    evaluates with gradients disabled, which is what tells the two apart here.
    """

    def __init__(self, criterion: nn.Module, eval_criterion: nn.Module) -> None:
        super().__init__()
        self.criterion, self.eval_criterion = criterion, eval_criterion

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (self.criterion if torch.is_grad_enabled() else self.eval_criterion)(logits, targets)


def train_poutyne(argv: Sequence[str], callbacks: Sequence[Any] = ()) -> PoutyneRun:
    """Parse ``catdog poutyne`` arguments, train, test and write the run's files; extra ``callbacks`` join the fit."""
    parser = build_parser()
    config = parser.parse_args(list(argv))
    plan = plan_run(config)
    setup = prepare(config, plan)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / "config.yaml").write_text(parser.dump(config, skip_none=False))
    print(describe(setup, plan))
    wandb_run = start_wandb(plan) if plan.options.wandb else None
    try:
        history, seconds, save_model = fit(setup, plan, [*callbacks, *wandb_callbacks(wandb_run)])
        metrics, metrics_path = run_test(setup, plan, epochs=len(history), train_seconds=seconds)
        if wandb_run is not None:
            wandb_run.summary.update({f"test_{k}": v for k, v in vars(metrics).items() if isinstance(v, float)})
    finally:
        if wandb_run is not None:
            wandb_run.finish()
    print(
        f"test accuracy {metrics.accuracy:.4f}, balanced accuracy {metrics.balanced_accuracy:.4f}, "
        f"auroc {metrics.auroc if metrics.auroc is None else round(metrics.auroc, 4)} after {metrics.epochs} "
        f"epoch(s); metrics written to {metrics_path}"
    )
    checkpoints = plan.run_dir / "checkpoints"
    return PoutyneRun(
        run_dir=plan.run_dir,
        history=history,
        metrics=metrics,
        metrics_path=metrics_path,
        predictions_path=plan.run_dir / "predictions.csv",
        best_checkpoint=checkpoints / "best.ckpt",
        last_checkpoint=checkpoints / "last.ckpt",
        saved_model=save_model.saved_path,
        uploaded_to=save_model.uploaded_to,
        upload_error=save_model.upload_error,
        stopped_early=len(history) < plan.epochs,
    )


# -- build ----------------------------------------------------------------------------------------------


def prepare(config: Any, plan: PoutynePlan) -> PoutyneSetup:
    """Seed, then build the classifier, the data module, optimizer, schedule and ``poutyne.Model``.

    The order is LightningCLI's (seed, then the model, then the data), so from the same seed and weights both
    trainers see the same batches. ``config`` is a parsed ``catdog poutyne`` configuration, ``plan`` its plan.
    """
    import lightning

    from catdog.data import CatDogDataModule
    from catdog.training.module import CatDogClassifier
    from catdog.training.optim import build_optimizer

    lightning.seed_everything(plan.seed, verbose=False)
    classifier = CatDogClassifier(**config.model.as_dict())
    datamodule = CatDogDataModule(**config.data.as_dict(), preprocess=classifier.preprocess_config)
    datamodule.setup("fit")
    steps = limit_batches(len(datamodule.train_dataloader()), plan.train_batches)
    validation_steps = None
    if plan.val_batches is not None:
        validation_steps = limit_batches(len(datamodule.val_dataloader()), plan.val_batches)
    hp = classifier.hparams
    optimizer, scheduler = build_optimizer(
        classifier.network,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        warmup_epochs=hp.warmup_epochs,
        min_lr_ratio=hp.min_lr_ratio,
        total_steps=steps * plan.epochs,
        epochs=plan.epochs,
    )
    model = make_model(
        classifier.network,
        optimizer,
        ClassifierLoss(classifier.criterion, classifier.eval_criterion),
        device=plan.device,
    )
    return PoutyneSetup(model, classifier, datamodule, scheduler, steps, validation_steps)


def make_model(network: nn.Module, optimizer: Any, loss: nn.Module, device: str = "cpu") -> Any:
    """The ``poutyne.Model`` of the trainer and the benchmark (batch metric: accuracy, in percent)."""
    from poutyne import Model

    return Model(network, optimizer, loss, batch_metrics=["accuracy"], device=device)


def describe(setup: PoutyneSetup, plan: PoutynePlan) -> str:
    """One line about the run: network, parameters, images, device, run dir."""
    from catdog.training.network import count_parameters

    hp, network, dm = setup.classifier.hparams, setup.network, setup.datamodule
    total, trainable = count_parameters(network), count_parameters(network, trainable_only=True)
    return (
        f"poutyne: {hp.model_name} ({'pretrained' if setup.classifier.pretrained else 'from scratch'}), "
        f"{total:,} parameters ({trainable:,} trainable), input {hp.image_size} px, {len(dm.train_set)} train / "
        f"{len(dm.val_set)} val images, {plan.epochs} epoch(s) of {setup.steps_per_epoch} batches, "
        f"device {plan.device}, run dir {plan.run_dir}"
    )


# -- train ----------------------------------------------------------------------------------------------


def fit(
    setup: PoutyneSetup, plan: PoutynePlan, extra: Sequence[Any] = ()
) -> tuple[list[dict[str, float]], float, SaveModel]:
    """Train with Poutyne's callbacks; returns the per-epoch history, the training seconds and SaveModel.

    ``checkpoints/best.ckpt`` is the epoch of lowest ``val_loss`` (ties keep the earlier epoch, as Lightning's
    ModelCheckpoint does) and ``checkpoints/last.ckpt`` is written after every epoch, so it holds the final
    completed one. After the fit the network holds the weights of the last epoch.
    """
    from catdog.data.splits import relative_name, write_file_list

    dm, options = setup.datamodule, plan.options
    # Built first: a bad save_model_epoch is refused before the previous run's checkpoints are touched.
    save_model = SaveModel(plan.run_dir / "saved", epoch=options.save_model_epoch, upload_uri=options.upload_uri)
    (plan.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for stale in ("best.ckpt", "last.ckpt"):
        (plan.run_dir / "checkpoints" / stale).unlink(missing_ok=True)
    write_file_list([relative_name(p, dm.data_dir) for p in dm.val_set.paths], plan.run_dir / "val_files.txt")
    train_data = LightningIterationOrder(dm.train_dataloader(), "train")
    val_data = LightningIterationOrder(dm.val_dataloader(), "valid")
    # SaveModel after EarlyStopping: it sees stop_training.
    callbacks = [train_data, val_data, *fit_callbacks(setup, plan, train_data.loader), save_model, *extra]
    started = time.perf_counter()
    logs = setup.model.fit_generator(
        train_data,
        val_data,
        epochs=plan.epochs,
        steps_per_epoch=setup.steps_per_epoch,
        validation_steps=setup.validation_steps,
        callbacks=callbacks,
        verbose=options.verbose,
    )
    seconds = time.perf_counter() - started
    history = [{key: float(value) for key, value in row.items()} for row in logs]
    (plan.run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    return history, seconds, save_model


def fit_callbacks(setup: PoutyneSetup, plan: PoutynePlan, train_loader: Any) -> list[Any]:
    """The callbacks that make Poutyne train as ``catdog fit``: seeds, freeze, schedule, BatchNorm, checkpoints."""
    import poutyne

    hp, checkpoints = setup.classifier.hparams, plan.run_dir / "checkpoints"
    callbacks: list[Any] = []
    if plan.epoch_seeds is not None:
        callbacks.append(EpochSeeds(**plan.epoch_seeds))
    if hp.freeze_backbone_epochs > 0:
        callbacks.append(FreezeBackbone(int(hp.freeze_backbone_epochs)))
    callbacks += [
        StepScheduler(setup.scheduler),
        RecalibrateBatchNorm(train_loader, hp.bn_recalibration_batches, hp.bn_recalibration_steps, plan.device),
        poutyne.ModelCheckpoint(
            str(checkpoints / "best.ckpt"),
            monitor="val_loss",
            mode="min",
            save_best_only=True,
            verbose=plan.options.verbose,
        ),  # fmt: skip
        poutyne.ModelCheckpoint(str(checkpoints / "last.ckpt")),
        poutyne.CSVLogger(str(plan.run_dir / "history.csv")),
    ]
    if plan.patience is not None:
        callbacks.append(
            poutyne.EarlyStopping(monitor="val_loss", mode="min", patience=plan.patience, min_delta=plan.min_delta)
        )
    return callbacks


# -- test and report ------------------------------------------------------------------------------------


def run_test(setup: PoutyneSetup, plan: PoutynePlan, epochs: int, train_seconds: float) -> tuple[Any, Path]:
    """Evaluate the best checkpoint on the test split (``predictions.csv`` and ``metrics.json`` from it) and on the
    validation split (``val_predictions.csv``)."""
    from catdog.data.splits import relative_name
    from catdog.metrics import (
        VAL_PREDICTIONS_FILENAME,
        read_predictions,
        run_metrics_from_predictions,
        write_metrics,
        write_predictions,
    )
    from catdog.training.batchnorm import batchnorm_layers
    from catdog.training.network import count_parameters

    best = plan.run_dir / "checkpoints" / "best.ckpt"
    if best.is_file():
        setup.model.load_weights(str(best))
    else:  # val_loss was never finite: nothing was "best"
        print(f"warning: no {best} (val_loss never finite); testing the last epoch's weights", file=sys.stderr)
    dm = setup.datamodule
    dm.setup("test")
    dataset = dm.test_set
    logits, targets = predict(setup.model, dm.test_dataloader())
    if targets.tolist() != list(dataset.labels):
        raise RuntimeError("the test loader's labels are not in the dataset's order; predictions cannot be matched")
    p_dog = logits.double().softmax(dim=1)[:, 1].tolist()
    files = [relative_name(p, dm.data_dir) for p in dataset.paths]
    predictions = write_predictions(files, dataset.labels, p_dog, plan.run_dir)
    val_logits, val_targets = predict(setup.model, dm.val_dataloader())
    if val_targets.tolist() != list(dm.val_set.labels):
        raise RuntimeError("the validation loader's labels are not in the dataset's order")
    val_files = [relative_name(p, dm.data_dir) for p in dm.val_set.paths]
    val_p_dog = val_logits.double().softmax(dim=1)[:, 1].tolist()
    write_predictions(val_files, dm.val_set.labels, val_p_dog, plan.run_dir, VAL_PREDICTIONS_FILENAME)
    warning = read_predictions(predictions).score().collapse_warning(len(batchnorm_layers(setup.network)))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    metrics = run_metrics_from_predictions(
        predictions,
        model=setup.classifier.hparams.model_name,
        framework="poutyne",
        pretrained=setup.classifier.pretrained,
        num_params=count_parameters(setup.network),
        epochs=epochs,
        train_seconds=round(train_seconds, 3),
        checkpoint=str(best.resolve()) if best.is_file() else None,
    )
    return metrics, write_metrics(metrics, plan.run_dir)


def predict(model: Any, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every batch of ``loader``, in loader order, on the CPU."""
    *_, logits, targets = model.evaluate_generator(
        loader, return_pred=True, return_ground_truth=True, convert_to_numpy=False, verbose=False
    )
    return torch.as_tensor(logits).float().cpu(), torch.as_tensor(targets).long().cpu()


def start_wandb(plan: PoutynePlan) -> Any:
    """A W&B run in ``<run_dir>/wandb`` (offline unless WANDB_MODE says otherwise), or None without wandb."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
    except ImportError:
        print("warning: wandb is not installed; the W&B logger is skipped", file=sys.stderr)
        return None
    return wandb.init(
        project=plan.options.wandb_project,
        name=f"poutyne-{plan.run_dir.name}",
        dir=str(plan.run_dir),
        config=plan.config,
        mode=os.environ["WANDB_MODE"],
        reinit="finish_previous",
    )


def wandb_callbacks(wandb_run: Any) -> list[Any]:
    """Poutyne's WandBLogger on ``wandb_run`` (none without a run)."""
    if wandb_run is None:
        return []
    import poutyne

    return [poutyne.WandBLogger(experiment=wandb_run)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``catdog poutyne``; returns the exit status (errors are :class:`CatDogError`)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        train_poutyne(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # --help, --print_config and argument errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    return 0
