"""The network (timm) and its LightningModule.

* :func:`build_network` creates a timm model with a 2-class head, optionally from local weights
  (``pretrained_file``) or the hub cache, never from the network.
* :func:`preprocess_config_for` turns timm's data config (mean, std, interpolation, crop) into the
  :class:`~catdog.transforms.PreprocessConfig` shared by training, export and serving.
* The BatchNorm policy, shared by every torch trainer: :func:`set_bn_momentum` (one momentum on every
  layer) and :func:`recalibrate_batchnorm` (running statistics re-estimated on training batches before
  the validations of a short run; see :class:`CatDogClassifier`).
* :class:`CatDogClassifier` trains it: :func:`build_loss` (cross-entropy with optional label smoothing),
  :func:`build_optimizer` (AdamW, linear warm-up then cosine decay), optional backbone freeze for the first
  epochs, torchmetrics accuracy / F1 / AUROC logged during training. The reported test numbers come from
  the saved predictions (:class:`catdog.callbacks.RunRecorder`).
* :func:`load_classifier` reads a checkpoint back for export (CPU, eval mode).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn

from catdog import CLASSES, CatDogError
from catdog.metrics import score
from catdog.transforms import PreprocessConfig

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tf_efficientnetv2_b2"
#: Momentum of every BatchNorm layer, in torch's convention (new = (1 - m) * old + m * batch).
DEFAULT_BN_MOMENTUM = 0.1
#: Training batches used to re-estimate the BatchNorm statistics before a validation (0: never).
DEFAULT_BN_RECALIBRATION_BATCHES = 32
#: Re-estimate only while fewer optimizer steps than this have run.
DEFAULT_BN_RECALIBRATION_STEPS = 500
# Why both: timm's tf_efficientnetv2_b2 already uses momentum 0.1 (TensorFlow's eps 1e-3 only), yet after
# the ~12 steps of a 3-epoch, batch-32 run on ~150 images, 0.9**12 = 28 % of the running statistics are
# still the initial 0 / 1 and the rest average weights that changed fast: evaluation called every test
# image one class (measured: accuracy 0.658 = the dog share, AUROC 0.78). A larger momentum only trades
# that lag for noise; re-estimating on training batches gives the statistics of the current weights
# (same run: accuracy 0.712, balanced accuracy 0.73, AUROC 0.77, no collapse). Cost: up to 32 forward
# passes without backward (about 11 training steps) per validation, and only during the first 500 steps:
# a real run (~600 steps per epoch at batch 32) pays it once, after epoch 0, ~2 % of that epoch; later the
# running averages (momentum 0.1: 0.9**500 ~ 1e-23 of the start left) follow slowly changing weights.

_HOW_TO_PROVIDE_WEIGHTS = (
    "Provide local weights with model.pretrained_file=<path to a timm state dict (.pth/.bin/.safetensors) or a "
    "catdog checkpoint> (e.g. `--model.pretrained_file weights/tf_efficientnetv2_b2.pth`), put the timm weights "
    "in the Hugging Face hub cache (HF_HOME), or train from scratch with model.pretrained=false "
    "(configs/scratch.yaml)."
)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters in ``module`` (all of them, or only those that require a gradient)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def set_backbone_trainable(network: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze every parameter of a timm network except its classifier head."""
    head = {id(p) for p in network.get_classifier().parameters()}
    for param in network.parameters():
        if id(param) not in head:
            param.requires_grad_(trainable)


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file as a plain timm state dict; a catdog/Lightning checkpoint has its prefix removed."""
    from timm.models import load_state_dict

    try:
        state_dict = load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as err:  # torch.load / safetensors raise many different types
        raise CatDogError(
            f"model.pretrained_file {path}: cannot read it as a PyTorch state dict ({type(err).__name__}: {err}). "
            + _HOW_TO_PROVIDE_WEIGHTS
        ) from err
    if not isinstance(state_dict, dict) or not state_dict:
        raise CatDogError(f"model.pretrained_file {path}: no weights found in the file. " + _HOW_TO_PROVIDE_WEIGHTS)
    prefix = "network."
    if all(key.startswith(prefix) for key in state_dict):  # a CatDogClassifier checkpoint
        state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def hub_cached_weights(model_name: str) -> str | None:
    """Path of the timm weights for ``model_name`` already in the local HF hub or torch hub cache, if any."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub ships with timm
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id, _, revision = cfg.hf_hub_id.partition("@")
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
            for name in names:
                found = try_to_load_from_cache(repo_id, name, revision=revision or None)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    if isinstance(cfg.url, str) and cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if candidate.is_file():
            return str(candidate)
    return None


def build_network(
    model_name: str = DEFAULT_MODEL,
    num_classes: int = len(CLASSES),
    pretrained: bool = False,
    pretrained_file: str | os.PathLike[str] | None = None,
    exportable: bool = False,
    zero_init_head: bool = True,
    bn_momentum: float | None = DEFAULT_BN_MOMENTUM,
    **kwargs: Any,
) -> nn.Module:
    """Create ``model_name`` with timm and a ``num_classes`` head; never downloads anything.

    ``pretrained_file`` (implies ``pretrained``) loads a local state dict: an ImageNet file has its
    classifier replaced by a fresh ``num_classes`` head, a file that already has a ``num_classes`` head
    (a fine-tuned model) keeps it. ``pretrained=True`` without a file uses the hub cache when the weights
    are there, otherwise raises :class:`CatDogError` saying how to provide them. ``exportable`` sets
    timm's layer config for ONNX export. ``zero_init_head`` starts a freshly created classifier at zero
    (timm's EfficientNet init draws it from U(-0.7, 0.7), which gives first logits around +-15 and makes
    training from scratch unstable); a head loaded from a file is left as it is. ``bn_momentum`` is set on
    every BatchNorm layer (:func:`set_bn_momentum`; ``None`` keeps timm's). Extra ``kwargs`` go to
    ``timm.create_model`` (``drop_rate``, ...).
    """
    network = _create_network(
        model_name, num_classes, pretrained, pretrained_file, exportable, zero_init_head, **kwargs
    )
    if bn_momentum is not None:
        set_bn_momentum(network, bn_momentum)
    return network


def _create_network(
    model_name: str,
    num_classes: int,
    pretrained: bool,
    pretrained_file: str | os.PathLike[str] | None,
    exportable: bool,
    zero_init_head: bool,
    **kwargs: Any,
) -> nn.Module:
    """:func:`build_network` without the BatchNorm momentum."""
    import timm

    if not timm.is_model(model_name.split(".")[0]):
        raise CatDogError(
            f"model.model_name {model_name!r} is not a timm model; see timm.list_models() (default {DEFAULT_MODEL!r})"
        )
    create = dict(num_classes=num_classes, exportable=exportable, **kwargs)
    if pretrained_file is None and not pretrained:
        network = timm.create_model(model_name, pretrained=False, **create)
        return _zero_head(network) if zero_init_head else network
    if pretrained_file is None:
        cached = hub_cached_weights(model_name)
        if cached is None:
            raise CatDogError(
                f"model.pretrained is true but no weights for {model_name!r} are available offline "
                "(no model.pretrained_file and nothing in the hub cache). " + _HOW_TO_PROVIDE_WEIGHTS
            )
        pretrained_file = cached
    path = Path(pretrained_file).expanduser()
    if not path.is_file():
        raise CatDogError(f"model.pretrained_file {path}: file not found. " + _HOW_TO_PROVIDE_WEIGHTS)
    state_dict = _load_weights_file(path)
    # timm drops the file's classifier whenever the overlay's num_classes differs from the model's, so tell
    # it how many classes the file really has: a fine-tuned 2-class head then survives, a 1000-class one is
    # replaced.
    probe = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    classifier = probe.pretrained_cfg.get("classifier") or "classifier"
    classifier = classifier[0] if isinstance(classifier, list | tuple) else classifier
    head = state_dict.get(f"{classifier}.weight")
    file_classes = int(head.shape[0]) if head is not None else num_classes
    overlay = dict(state_dict=state_dict, num_classes=file_classes)
    try:
        network = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **create)
    except RuntimeError as err:
        raise CatDogError(
            f"model.pretrained_file {path}: its weights do not fit {model_name!r} ({str(err).splitlines()[0]}). "
            "Use weights saved from the same architecture, or set model.model_name to match the file."
        ) from err
    return _zero_head(network) if zero_init_head and file_classes != num_classes else network


# -- BatchNorm policy -------------------------------------------------------------------------------


def batchnorm_layers(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``network`` (timm's ``BatchNormAct2d`` included)."""
    return [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_bn_momentum(network: nn.Module, momentum: float) -> int:
    """Set ``momentum`` (torch convention) on every BatchNorm layer; returns how many layers were set.

    timm's ``tf_`` models copy TensorFlow's 0.99 decay, i.e. 0.01 here: after a few dozen steps their
    running statistics are still mostly the initial mean 0 / variance 1 and evaluation calls every
    image one class. Keras' ``BatchNormalization(momentum=...)`` is ``1 - momentum`` in this convention.
    """
    if not 0.0 < momentum <= 1.0:
        raise CatDogError(f"model.bn_momentum must be in (0, 1] (torch convention, e.g. 0.1), got {momentum}")
    layers = batchnorm_layers(network)
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


def recalibrate_batchnorm(
    network: nn.Module,
    batches: Iterable[Any],
    max_batches: int | None = None,
    device: torch.device | str | None = None,
) -> int:
    """Re-estimate every BatchNorm layer's running statistics from ``batches``; returns the batches used.

    ``batches`` yields image tensors or ``(images, ...)`` tuples (a training loader); at most
    ``max_batches`` are read. The statistics are reset and replaced by the exact average over those
    batches for the current weights (:func:`torch.optim.swa_utils.update_bn`), so they match the weights
    however few steps have run; layer momenta and the train/eval mode are restored. Nothing changes when
    ``batches`` holds no batch of two images or more. Runs with gradients off, also inside Lightning's inference mode.
    """
    from torch.optim.swa_utils import update_bn

    # train-mode BatchNorm cannot normalise a single image: such batches are skipped
    usable = (b for b in itertools.islice(batches, max_batches) if len(b[0] if isinstance(b, list | tuple) else b) > 1)
    first = next(usable, None)
    if first is None or not batchnorm_layers(network):
        return 0
    used = 0

    def counted() -> Iterator[Any]:
        nonlocal used
        for batch in itertools.chain([first], usable):
            used += 1
            yield batch

    with torch.inference_mode(False):
        update_bn(counted(), network, device=device)
    return used


def _zero_head(network: nn.Module) -> nn.Module:
    head = network.get_classifier() if hasattr(network, "get_classifier") else None
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    return network


def preprocess_config_for(network_or_model_name: nn.Module | str, image_size: int) -> PreprocessConfig:
    """The eval preprocessing for a timm network (or model name) at ``image_size`` pixels.

    Mean, std, interpolation and crop percentage come from timm's ``resolve_data_config``; the input
    size is the one given (models here train at sizes other than their ImageNet default).
    """
    from timm.data import resolve_data_config

    if isinstance(network_or_model_name, str):
        import timm

        cfg = timm.models.get_pretrained_cfg(network_or_model_name)
        data_config = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {"x": 0})
    else:
        data_config = resolve_data_config({}, model=network_or_model_name)
    interpolation = data_config.get("interpolation", "bicubic")
    return PreprocessConfig(
        image_size=int(image_size),
        mean=tuple(float(v) for v in data_config["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in data_config["std"]),  # type: ignore[arg-type]
        crop_pct=float(data_config.get("crop_pct", 1.0)),
        crop_mode=str(data_config.get("crop_mode") or "center"),
        interpolation=interpolation if interpolation in {"nearest", "bilinear", "bicubic", "lanczos"} else "bicubic",
    )


def binary_metrics() -> torchmetrics.MetricCollection:
    """Accuracy, F1 and AUROC of the dog probability (keys ``acc``, ``f1``, ``auroc``), shared by the trainers."""
    return torchmetrics.MetricCollection(
        {
            "acc": torchmetrics.classification.BinaryAccuracy(),
            "f1": torchmetrics.classification.BinaryF1Score(),
            "auroc": torchmetrics.classification.BinaryAUROC(),
        }
    )


def build_loss(label_smoothing: float = 0.1) -> nn.CrossEntropyLoss:
    """The training loss: cross-entropy with ``label_smoothing`` (validation and test use plain cross-entropy)."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def build_optimizer(
    network: nn.Module,
    lr: float,
    weight_decay: float,
    warmup_epochs: float,
    min_lr_ratio: float,
    total_steps: float,
    epochs: int,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases and norms) with a per-step linear warm-up then cosine decay.

    ``total_steps`` is the number of optimizer steps of the whole run and ``epochs`` its epoch count
    (0 when unknown); the warm-up lasts ``warmup_epochs`` epochs, at most half the run. Call
    ``scheduler.step()`` after every optimizer step.
    """
    decay, no_decay = [], []
    for name, param in network.named_parameters():
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    total = int(total_steps) if math.isfinite(total_steps) and total_steps > 0 else 1
    per_epoch = total / epochs if epochs and epochs > 0 else total
    warmup = int(min(warmup_epochs * per_epoch, 0.5 * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def pretrained(self) -> bool:
        return bool(self.hparams.pretrained or self.hparams.pretrained_file)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, 2) for images of shape (N, 3, H, W) normalised by :attr:`preprocess_config`."""
        return self.network(images)

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
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(targets))
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
        self.log(f"{stage}_loss", loss, prog_bar=True, on_epoch=True, batch_size=len(targets), sync_dist=True)
        self.log_dict(metrics, prog_bar=stage == "val", on_epoch=True, batch_size=len(targets))
        return {"loss": loss, "p_dog": dog_prob}

    def on_validation_start(self) -> None:
        """Re-estimate the BatchNorm statistics on training batches while few steps have run (fit only).

        The training loader draws from its own generator, and torch's global one (dropout in the train-mode
        passes) is restored afterwards, so the re-estimation changes no later random draw.
        """
        trainer = self.trainer
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.hparams.bn_recalibration_batches <= 0:
            return
        if trainer.global_step >= self.hparams.bn_recalibration_steps:
            return
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            recalibrate_batchnorm(
                self.network, trainer.train_dataloader, self.hparams.bn_recalibration_batches, device=self.device
            )

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        """Warn when validation calls (nearly) everything one class although P(dog) ranks the images well."""
        outputs, self._val_outputs = self._val_outputs, []
        if not outputs or self.trainer.sanity_checking:
            return
        labels = torch.cat([targets for _, targets in outputs]).numpy()
        p_dog = torch.cat([probs for probs, _ in outputs]).double().numpy()
        warning = score(labels, p_dog).collapse_warning()
        if warning:
            log.warning("epoch %d validation: %s", self.current_epoch, warning)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Loss and P(dog) of a test batch (:class:`catdog.callbacks.RunRecorder` writes the predictions)."""
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
