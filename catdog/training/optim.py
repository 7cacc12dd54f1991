"""The training loss and the optimizer with its per-step schedule, shared by every torch trainer."""

from __future__ import annotations

import math

import torch
from torch import nn


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

    The learning rates are timm's ``CosineLRScheduler`` (``warmup_prefix=True``, per step) and the groups
    timm's ``param_groups_weight_decay`` (both checked in the tests). They stay a torch ``LambdaLR``, which
    Lightning and Poutyne step and checkpoint as they are, and a grouping that keeps parameters frozen when
    the optimizer is built (timm leaves those out, so a frozen backbone would never train after unfreezing).
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
