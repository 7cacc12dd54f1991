"""build_optimizer: the learning rate of every step against the closed-form warm-up + cosine, and weight decay."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from catdog.training.module import CatDogClassifier
from catdog.training.network import build_network
from catdog.training.optim import build_optimizer


def closed_form(step: int, lr: float, warmup: int, total: int, min_lr_ratio: float) -> float:
    """Linear warm-up from lr / (warmup + 1) to lr over ``warmup`` steps, then cosine down to ``min_lr_ratio * lr``."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / (total - warmup))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2)


def learning_rates(total_steps: int, epochs: int, warmup_epochs: float, lr: float = 0.01) -> list[float]:
    """The learning rate used by each of ``total_steps + 1`` optimizer steps, stepping the scheduler after each."""
    network = nn.Linear(3, 2)
    optimizer, scheduler = build_optimizer(
        network, lr=lr, weight_decay=0.05, warmup_epochs=warmup_epochs, min_lr_ratio=0.01,
        total_steps=total_steps, epochs=epochs,
    )  # fmt: skip
    rates = []
    for _ in range(total_steps + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        assert {group["lr"] for group in optimizer.param_groups} == {rates[-1]}  # both groups follow it
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    ("total", "epochs", "warmup_epochs", "warmup_steps"),
    [(40, 4, 1.0, 10), (40, 4, 0.5, 5), (12, 3, 3.0, 6), (30, 3, 0.0, 0)],  # warm-up is at most half the run
)
def test_learning_rate_of_every_step_is_the_closed_form(
    total: int, epochs: int, warmup_epochs: float, warmup_steps: int
) -> None:
    rates = learning_rates(total, epochs, warmup_epochs)
    expected = [closed_form(step, 0.01, warmup_steps, total, 0.01) for step in range(total + 1)]
    assert rates == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert max(rates) == pytest.approx(0.01) and rates[-1] == pytest.approx(0.0001)


def test_no_weight_decay_on_biases_and_norm_layers() -> None:
    network = build_network("tf_efficientnetv2_b2")
    optimizer, _ = build_optimizer(
        network, lr=0.1, weight_decay=0.5, warmup_epochs=0, min_lr_ratio=0.01, total_steps=10, epochs=1
    )
    decay = {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    no_decay = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    expected_no_decay = set()
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            expected_no_decay |= {id(module.weight), id(module.bias)}
        elif isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
            expected_no_decay.add(id(module.bias))
    weights = {id(m.weight) for m in network.modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert no_decay == expected_no_decay and decay == weights
    assert len(decay) + len(no_decay) == len(list(network.parameters()))
    # behaviour: with zero gradients AdamW only decays, so a conv weight shrinks and a norm weight stays put
    before = {name: p.detach().clone() for name, p in network.named_parameters()}
    for param in network.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    params = dict(network.named_parameters())
    torch.testing.assert_close(params["conv_stem.weight"], before["conv_stem.weight"] * (1 - 0.1 * 0.5))
    torch.testing.assert_close(params["bn1.weight"], before["bn1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(params["classifier.bias"], before["classifier.bias"], rtol=0, atol=0)


@pytest.mark.parametrize(("total", "epochs", "warmup_epochs"), [(40, 4, 1.0), (40, 4, 0.5), (12, 3, 3.0), (30, 3, 0.0)])
def test_timm_cosine_scheduler_gives_the_same_learning_rates(total: int, epochs: int, warmup_epochs: float) -> None:
    """The schedule is timm's CosineLRScheduler (per step, warm-up prefix) to float precision.

    catdog keeps a torch ``LambdaLR``: Lightning and Poutyne step it and save it in checkpoints as they are,
    where timm's scheduler needs ``step_update`` calls from each trainer.
    """
    from timm.scheduler import CosineLRScheduler

    lr, min_lr_ratio = 0.01, 0.01
    warmup = int(min(warmup_epochs * total / epochs, 0.5 * total))
    optimizer = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=lr)
    timm_scheduler = CosineLRScheduler(
        optimizer, t_initial=total - warmup, lr_min=lr * min_lr_ratio, warmup_t=warmup,
        warmup_lr_init=lr / (warmup + 1), warmup_prefix=True, t_in_epochs=False,
    )  # fmt: skip
    timm_rates = []
    for step in range(total + 1):
        timm_scheduler.step_update(step)
        timm_rates.append(optimizer.param_groups[0]["lr"])
    assert learning_rates(total, epochs, warmup_epochs, lr) == pytest.approx(timm_rates, rel=1e-9, abs=1e-15)


def test_timm_parameter_groups_match_but_would_drop_frozen_parameters() -> None:
    """timm's ``param_groups_weight_decay`` groups as build_optimizer does; it also leaves out parameters frozen
    when the optimizer is built, which a freeze-then-unfreeze schedule (``freeze_backbone_epochs``) must keep."""
    from timm.optim import param_groups_weight_decay

    network = build_network("test_efficientnet")
    optimizer, _ = build_optimizer(
        network, lr=0.1, weight_decay=0.5, warmup_epochs=0, min_lr_ratio=0.01, total_steps=10, epochs=1
    )
    ours = {group["weight_decay"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    theirs = {
        group["weight_decay"]: {id(p) for p in group["params"]} for group in param_groups_weight_decay(network, 0.5)
    }
    assert ours == theirs
    network.conv_stem.weight.requires_grad_(False)
    frozen = {id(p) for group in param_groups_weight_decay(network, 0.5) for p in group["params"]}
    assert id(network.conv_stem.weight) not in frozen
    optimizer, _ = build_optimizer(
        network, lr=0.1, weight_decay=0.5, warmup_epochs=0, min_lr_ratio=0.01, total_steps=10, epochs=1
    )
    assert any(p is network.conv_stem.weight for group in optimizer.param_groups for p in group["params"])


class _RecordLearningRate(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_the_classifier_schedules_over_the_whole_fit() -> None:
    """In a Lightning fit, step s uses closed_form(s) with the run's total steps and epochs."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, 32, 32), torch.randint(0, 2, (12,)))
    model = CatDogClassifier(image_size=32, lr=0.004, warmup_epochs=1.0, min_lr_ratio=0.01, bn_recalibration_batches=0)
    recorder = _RecordLearningRate()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder])  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=4, drop_last=True))
    total = 3 * 3  # 3 epochs of 3 steps; the warm-up is one epoch
    assert recorder.rates == pytest.approx([closed_form(s, 0.004, 3, total, 0.01) for s in range(total)], rel=1e-12)
