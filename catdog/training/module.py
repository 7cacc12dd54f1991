"""The LightningModule that trains a timm network to tell cats from dogs.

* :class:`CatDogClassifier` trains the network of :func:`catdog.training.network.build_network` with the loss and
  optimizer of :mod:`catdog.training.optim` (cross-entropy with label smoothing; AdamW, linear warm-up then cosine
  decay) and the BatchNorm policy of :mod:`catdog.training.batchnorm`, an optional backbone freeze for the first
  epochs, and torchmetrics accuracy / F1 / AUROC logged during training. The reported test numbers come
  from the saved predictions (:class:`catdog.training.callbacks.RunRecorder`).
* :func:`load_classifier` reads a checkpoint back for export (CPU, eval mode).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn

from catdog import CLASSES, CatDogError
from catdog.metrics import score
from catdog.training.batchnorm import (
    DEFAULT_BN_MOMENTUM,
    DEFAULT_BN_RECALIBRATION_BATCHES,
    DEFAULT_BN_RECALIBRATION_STEPS,
    average_batchnorm_statistics,
    batchnorm_layers,
    recalibrate_batchnorm,
)
from catdog.training.distributed import gather_rows
from catdog.training.network import (
    DEFAULT_MODEL,
    build_network,
    count_parameters,
    preprocess_config_for,
    set_backbone_trainable,
)
from catdog.training.optim import build_loss, build_optimizer

log = logging.getLogger(__name__)


def binary_metrics() -> torchmetrics.MetricCollection:
    """Accuracy, F1 and AUROC of the dog probability (keys ``acc``, ``f1``, ``auroc``), shared by the trainers."""
    return torchmetrics.MetricCollection(
        {
            "acc": torchmetrics.classification.BinaryAccuracy(),
            "f1": torchmetrics.classification.BinaryF1Score(),
            "auroc": torchmetrics.classification.BinaryAUROC(),
        }
    )


class CatDogClassifier(pl.LightningModule):
    """A timm network trained to tell cats (0) from dogs (1).

    Args:
        model_name: any timm model name.
        pretrained: start from ImageNet weights (``pretrained_file`` or the hub cache; see :func:`build_network`).
        pretrained_file: local weights file; implies ``pretrained``.
        image_size: training and eval input size in pixels (linked from ``data.image_size`` by the CLI).
        lr: peak AdamW learning rate, reached after the warm-up.
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up length (fraction of the run at most 0.5), then cosine decay to
            ``min_lr_ratio * lr``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        label_smoothing: cross-entropy label smoothing.
        freeze_backbone_epochs: train only the classifier for this many epochs first.
        drop_rate: dropout before the classifier (timm ``drop_rate``).
        bn_momentum: momentum of every BatchNorm layer, torch convention (:func:`set_bn_momentum`).
        bn_recalibration_batches: before each validation of ``fit``, re-estimate the BatchNorm statistics on
            up to this many training batches (:func:`recalibrate_batchnorm`); 0 never does.
        bn_recalibration_steps: ... but only while fewer optimizer steps than this have run.
        channels_last: on a CUDA GPU, keep weights and inputs in channels-last memory format (faster convolutions
            with mixed precision on tensor cores); nothing on the CPU.
        compile: on a CUDA GPU, compile the network with ``torch.compile`` (in place: checkpoint keys unchanged;
            a slow first step, faster later ones); nothing on the CPU.
        load_weights: build with the pretrained weights; :func:`load_classifier` passes ``False`` because the
            checkpoint's state dict replaces them anyway.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        image_size: int = 224,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        freeze_backbone_epochs: int = 0,
        drop_rate: float = 0.2,
        bn_momentum: float = DEFAULT_BN_MOMENTUM,
        bn_recalibration_batches: int = DEFAULT_BN_RECALIBRATION_BATCHES,
        bn_recalibration_steps: int = DEFAULT_BN_RECALIBRATION_STEPS,
        exportable: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["load_weights", "exportable"])
        use_weights = load_weights and (pretrained or pretrained_file is not None)
        self.network = build_network(
            model_name,
            num_classes=len(CLASSES),
            pretrained=use_weights,
            pretrained_file=pretrained_file if use_weights else None,
            exportable=exportable,
            drop_rate=drop_rate,
            bn_momentum=bn_momentum,
        )
        self.preprocess_config = preprocess_config_for(self.network, image_size)
        self.example_input_array = torch.zeros(1, 3, image_size, image_size)
        self.criterion = build_loss(label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss()  # val_loss / test_loss: plain cross-entropy
        self.train_acc = torchmetrics.classification.BinaryAccuracy()
        self.val_metrics = binary_metrics().clone(prefix="val_")
        self.test_metrics = binary_metrics().clone(prefix="test_")
        # The mean loss over every evaluated image, also when processes evaluate different numbers of images
        # (sums reduced across processes; Lightning's sync_dist mean floors the total count divided by the processes).
        self.val_loss_mean, self.test_loss_mean = torchmetrics.MeanMetric(), torchmetrics.MeanMetric()
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._memory_format = torch.contiguous_format

    @property
    def pretrained(self) -> bool:
        return bool(self.hparams.pretrained or self.hparams.pretrained_file)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, 2) for images of shape (N, 3, H, W) normalised by :attr:`preprocess_config`."""
        return self.network(images.contiguous(memory_format=self._memory_format))

    def setup(self, stage: str) -> None:
        """On a CUDA GPU, the GPU-only speed-ups asked for (``channels_last``, ``compile``)."""
        wanted = [name for name in ("channels_last", "compile") if self.hparams.get(name)]
        if not wanted:
            return
        if self.trainer.strategy.root_device.type != "cuda":
            if self.global_rank == 0:
                print(f"model.{' and model.'.join(wanted)}: GPU-only, off on {self.trainer.strategy.root_device}")
            return
        if self.hparams.get("channels_last"):
            self._memory_format = torch.channels_last
            self.network.to(memory_format=torch.channels_last)
        if self.hparams.get("compile"):
            self.network.compile()

    # training -------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.global_rank == 0:
            total, trainable = count_parameters(self.network), count_parameters(self.network, trainable_only=True)
            print(
                f"{self.hparams.model_name} ({'pretrained' if self.pretrained else 'from scratch'}), "
                f"{total:,} parameters ({trainable:,} trainable), input {self.hparams.image_size} px, "
                f"classes {dict(enumerate(CLASSES))}"
            )

    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.hparams.freeze_backbone_epochs
        set_backbone_trainable(self.network, not frozen)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        self.train_acc(logits.argmax(dim=1), targets)
        self.log(
            "train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(targets), sync_dist=True
        )
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        images, targets = batch
        logits = self(images)
        loss = self.eval_criterion(logits, targets)
        dog_prob = logits.softmax(dim=1)[:, 1]
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(dog_prob, targets)
        if stage == "val":
            self._val_outputs.append((dog_prob.detach().float().cpu(), targets.detach().cpu()))
        mean_loss = self.val_loss_mean if stage == "val" else self.test_loss_mean
        mean_loss.update(loss.detach(), weight=len(targets))
        self.log(f"{stage}_loss", mean_loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(targets))
        self.log_dict(metrics, prog_bar=stage == "val", on_epoch=True, batch_size=len(targets))
        return {"loss": loss, "p_dog": dog_prob}

    def on_validation_start(self) -> None:
        """Re-estimate the BatchNorm statistics on training batches while few steps have run (fit only).

        The training loader draws from its own generator, and torch's global one (dropout in the train-mode
        passes) is restored afterwards, so the re-estimation changes no later random draw. In a distributed fit
        the processes' statistics are averaged (re-estimated or not), so every process validates, and rank 0
        saves, the same model.
        """
        trainer = self.trainer
        if trainer.state.fn != "fit":
            return
        recalibrate = not trainer.sanity_checking and self.hparams.bn_recalibration_batches > 0
        if recalibrate and trainer.global_step < self.hparams.bn_recalibration_steps:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                recalibrate_batchnorm(
                    self.network, trainer.train_dataloader, self.hparams.bn_recalibration_batches, device=self.device
                )
        elif trainer.world_size > 1:
            average_batchnorm_statistics(self.network)

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        """Warn when validation calls (nearly) everything one class although P(dog) ranks the images well.

        In a distributed run the processes' shares are gathered first, so the warning is about the whole
        validation split and rank 0 says it once.
        """
        outputs, self._val_outputs = self._val_outputs, []
        if self.trainer.sanity_checking:
            return
        outputs = gather_rows(self.trainer, outputs)  # a collective: every process takes part, even with none
        if not outputs or not self.trainer.is_global_zero:
            return
        labels = torch.cat([targets for _, targets in outputs]).numpy()
        p_dog = torch.cat([probs for probs, _ in outputs]).double().numpy()
        warning = score(labels, p_dog).collapse_warning(len(batchnorm_layers(self.network)))
        if warning:
            log.warning("epoch %d validation: %s", self.current_epoch, warning)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Loss and P(dog) of a test batch (:class:`catdog.training.callbacks.RunRecorder` writes the predictions)."""
        return self._eval_step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        images, targets = batch
        probs = self(images).softmax(dim=1)
        return {"probs": probs, "pred": probs.argmax(dim=1), "target": targets}

    # checkpoint bookkeeping ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["catdog"] = {
            "classes": list(CLASSES),
            "preprocess": self.preprocess_config.as_dict(),
        }

    # optimisation ---------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        epochs = self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else 0
        optimizer, scheduler = build_optimizer(
            self.network,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            warmup_epochs=self.hparams.warmup_epochs,
            min_lr_ratio=self.hparams.min_lr_ratio,
            total_steps=total,
            epochs=epochs,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_classifier(ckpt_path: str | os.PathLike[str], exportable: bool = False) -> CatDogClassifier:
    """Load a :class:`CatDogClassifier` checkpoint on the CPU in eval mode.

    The pretrained weights file named in the checkpoint's hyperparameters is not needed (the
    checkpoint's state dict holds the trained weights). ``exportable=True`` rebuilds the network with
    timm's ``exportable`` layer config and loads the same state dict (for ONNX export).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise CatDogError(f"checkpoint {path}: file not found (train one with `catdog fit -c configs/scratch.yaml`)")
    try:
        model = CatDogClassifier.load_from_checkpoint(
            path, map_location="cpu", load_weights=False, exportable=exportable, weights_only=False
        )
    except (KeyError, RuntimeError, TypeError, EOFError, OSError) as err:
        raise CatDogError(f"checkpoint {path}: not a readable catdog checkpoint ({type(err).__name__}: {err})") from err
    return model.eval()
