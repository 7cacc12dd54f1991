"""The BatchNorm policy: one momentum on every layer, statistics re-estimated from training batches."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from catdog import CatDogError
from catdog.training.batchnorm import (
    DEFAULT_BN_MIN_VALUES,
    DEFAULT_BN_MOMENTUM,
    batchnorm_layers,
    recalibrate_batchnorm,
    set_bn_momentum,
)
from catdog.training.network import build_network

MODEL = "tf_efficientnetv2_b2"


def test_build_network_sets_the_momentum_on_every_batchnorm_layer() -> None:
    untouched = timm.create_model(MODEL, num_classes=2)
    count = len(batchnorm_layers(untouched))
    assert count > 50  # timm's BatchNormAct2d layers are found too
    for momentum in (0.3, 0.01):
        assert {layer.momentum for layer in batchnorm_layers(build_network(MODEL, bn_momentum=momentum))} == {momentum}
    layers = batchnorm_layers(build_network(MODEL))
    assert len(layers) == count and {layer.momentum for layer in layers} == {DEFAULT_BN_MOMENTUM}
    kept = batchnorm_layers(build_network(MODEL, bn_momentum=None))
    assert [layer.momentum for layer in kept] == [layer.momentum for layer in batchnorm_layers(untouched)]


def test_set_bn_momentum_rejects_values_outside_torch_convention() -> None:
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert set_bn_momentum(network, 0.5) == 1 and network[1].momentum == 0.5
    with pytest.raises(CatDogError, match="bn_momentum"):
        set_bn_momentum(network, 0.99 + 1)
    with pytest.raises(CatDogError, match="bn_momentum"):
        set_bn_momentum(network, 0.0)


def _batch_statistics(conv: nn.Module, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance of ``conv``'s output, averaged over batches (update_bn's estimate)."""
    with torch.no_grad():
        outputs = [conv(batch) for batch in batches]
    means = torch.stack([out.mean(dim=(0, 2, 3)) for out in outputs])
    variances = torch.stack([out.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for out in outputs])
    return means.mean(dim=0), variances.mean(dim=0)


def test_recalibration_gives_the_average_of_the_batch_statistics() -> None:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5, momentum=0.01), nn.ReLU())
    batches = [torch.randn(8, 3, 12, 12) * 3 + 2 for _ in range(6)]
    network.eval()
    used = recalibrate_batchnorm(network, ((b, torch.zeros(8)) for b in batches), max_batches=4)
    assert used == 4
    mean, var = _batch_statistics(network[0], batches[:4])
    torch.testing.assert_close(network[1].running_mean, mean)
    torch.testing.assert_close(network[1].running_var, var)
    assert network[1].momentum == 0.01 and not network.training  # momentum and mode restored


def test_recalibration_on_a_timm_network_matches_its_first_layer_inputs() -> None:
    torch.manual_seed(1)
    network = build_network(MODEL)
    batches = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    network.train()
    with torch.inference_mode():  # as inside Lightning's validation loop
        used = recalibrate_batchnorm(network, batches)
    assert used == 3 and network.training
    mean, var = _batch_statistics(network.conv_stem, batches)
    torch.testing.assert_close(network.bn1.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(network.bn1.running_var, var, rtol=1e-4, atol=1e-5)
    assert {layer.momentum for layer in batchnorm_layers(network)} == {DEFAULT_BN_MOMENTUM}


def test_recalibration_without_batches_changes_nothing_and_skips_single_images() -> None:
    torch.manual_seed(2)
    network = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with torch.no_grad():
        network[1].running_mean.fill_(5.0)
    assert recalibrate_batchnorm(network, []) == 0
    assert torch.equal(network[1].running_mean, torch.full((4,), 5.0))
    assert recalibrate_batchnorm(network, [torch.randn(1, 3, 16, 16), torch.randn(3, 3, 16, 16)]) == 1
    assert not torch.equal(network[1].running_mean, torch.full((4,), 5.0))


def test_layers_that_see_too_few_values_keep_their_statistics() -> None:
    """A layer re-estimated from fewer than ``min_values`` values per channel keeps the statistics it had."""
    torch.manual_seed(3)
    network = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4)
    )
    with torch.no_grad():
        for layer in (network[1], network[4]):
            layer.running_mean.fill_(0.5)
            layer.running_var.fill_(2.0)
            layer.num_batches_tracked.fill_(7)
    batches = [torch.randn(8, 3, 8, 8) for _ in range(4)]  # 4 x 8 x 8 x 8 = 2048 values, then 4 x 8 = 32
    assert DEFAULT_BN_MIN_VALUES > 32
    assert recalibrate_batchnorm(network, batches) == 4
    mean, var = _batch_statistics(network[0], batches)
    torch.testing.assert_close(network[1].running_mean, mean)
    torch.testing.assert_close(network[1].running_var, var)
    assert torch.equal(network[4].running_mean, torch.full((4,), 0.5))
    assert torch.equal(network[4].running_var, torch.full((4,), 2.0))
    assert int(network[4].num_batches_tracked) == 7
    assert recalibrate_batchnorm(network, batches, min_values=32) == 4  # enough for this smaller minimum
    assert not torch.equal(network[4].running_var, torch.full((4,), 2.0))


def _eval_misfit(network: nn.Module, images: torch.Tensor) -> tuple[float, float, float]:
    """Largest RMS z-score of a BatchNorm layer's eval input against its running statistics, the largest pooled
    feature, and the relative float32 error of the pooled features against float64."""
    zscores: list[float] = []

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        x = inputs[0].transpose(0, 1).flatten(1)
        z = (x - layer.running_mean[:, None]) / (layer.running_var[:, None] + layer.eps).sqrt()
        zscores.append(float(z.pow(2).mean().sqrt()))

    network.eval()
    hooks = [layer.register_forward_hook(hook) for layer in batchnorm_layers(network)]
    with torch.no_grad():
        features = network.forward_head(network.forward_features(images), pre_logits=True).double()
    for handle in hooks:
        handle.remove()
    exact_network = copy.deepcopy(network).double()
    with torch.no_grad():
        exact = exact_network.forward_head(exact_network.forward_features(images.double()), pre_logits=True)
    return max(zscores), float(exact.abs().max()), float((features - exact).norm() / exact.norm())


def test_one_batch_at_32_px_leaves_an_eval_network_that_float32_can_compute(fused_dataset: Path) -> None:
    """The 1-epoch demo on its smallest data: one batch of 16 images, so 16 values per channel at the 1x1 last stage.

    Re-estimating every layer from them (``min_values=0``, the former policy) leaves eval inputs hundreds of
    running standard deviations off, features in the thousands and float32 off by percents (the export check
    then refuses the model); the layers that saw too few values keep their statistics instead.
    """
    from catdog.data import CatDogDataModule

    module = CatDogDataModule(fused_dataset, image_size=32, batch_size=16, num_workers=0)
    module.setup("fit")
    module.setup("test")
    torch.manual_seed(0)
    batch, _ = next(iter(module.train_dataloader()))
    others = torch.cat([images for images, _ in module.test_dataloader()])
    results = {}
    for min_values in (0, DEFAULT_BN_MIN_VALUES):
        torch.manual_seed(0)
        network = build_network(MODEL)
        recalibrate_batchnorm(network, [batch], min_values=min_values)
        results[min_values] = _eval_misfit(network, others)
    z, peak, error = results[0]
    assert z > 50 and peak > 100 and error > 1e-3, results  # the failure the minimum prevents
    z, peak, error = results[DEFAULT_BN_MIN_VALUES]
    assert z < 3 and peak < 10 and error < 1e-5, results


def test_the_classifier_recalibrates_before_early_validations_only(
    fused_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During fit, each validation before ``bn_recalibration_steps`` steps re-estimates the statistics first."""
    import lightning.pytorch as pl

    import catdog.training.module
    from catdog.data import CatDogDataModule
    from catdog.training.module import CatDogClassifier

    calls: list[tuple[int, int | None, bool]] = []
    real = catdog.training.module.recalibrate_batchnorm

    def spy(network: nn.Module, batches: object, max_batches: int | None = None, device: object = None) -> int:
        calls.append((trainer.global_step, max_batches, trainer.sanity_checking))
        return real(network, batches, max_batches, device)

    monkeypatch.setattr(catdog.training.module, "recalibrate_batchnorm", spy)
    dm = CatDogDataModule(fused_dataset, image_size=32, batch_size=16, num_workers=0)
    model = CatDogClassifier(image_size=32, bn_recalibration_batches=3, bn_recalibration_steps=4)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert calls == [(2, 3, False)]  # after epoch 0 (2 steps); not in the sanity check, not at step 4 or 6
    trainer.validate(model, datamodule=dm)
    assert len(calls) == 1  # a validation outside fit leaves the statistics as trained


def test_collapsed_validation_is_named_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """All-dog predictions that rank every cat below every dog: the signature of stale statistics."""
    from types import SimpleNamespace

    from catdog.training.module import CatDogClassifier

    model = CatDogClassifier(image_size=32)
    model._trainer = SimpleNamespace(  # type: ignore[assignment]
        sanity_checking=False, current_epoch=0, world_size=1, is_global_zero=True
    )
    model._val_outputs = [(torch.tensor([0.6, 0.7, 0.8, 0.9, 0.95]), torch.tensor([0, 0, 1, 1, 1]))]
    with caplog.at_level("WARNING", logger="catdog.training.module"):
        model.on_validation_epoch_end()
    assert "majority-class share 0.600" in caplog.text and "AUROC is 1.000" in caplog.text
    caplog.clear()
    model._val_outputs = [(torch.tensor([0.1, 0.2, 0.8, 0.9, 0.95]), torch.tensor([0, 0, 1, 1, 1]))]
    with caplog.at_level("WARNING", logger="catdog.training.module"):
        model.on_validation_epoch_end()
    assert caplog.text == ""
