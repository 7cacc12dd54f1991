"""The BatchNorm policy shared by every torch trainer (Lightning, Poutyne).

* :func:`set_bn_momentum`: one momentum on every BatchNorm layer.
* :func:`recalibrate_batchnorm`: running statistics re-estimated on training batches before the validations
  of a short run (see :class:`catdog.training.module.CatDogClassifier`); a layer that saw too few values per channel
  for that (:data:`DEFAULT_BN_MIN_VALUES`) keeps its own. In a distributed run the processes' estimates are
  averaged, so every process (and the checkpoint rank 0 saves) holds the same statistics.
* :func:`average_batchnorm_statistics`: the running statistics averaged across the processes of a distributed run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from catdog import CatDogError

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

#: Values per channel (images x height x width, summed over the batches read) a layer's re-estimate must rest on.
DEFAULT_BN_MIN_VALUES = 512
# Why a minimum: a re-estimate from few values per channel does not describe the eval-mode activations, and the
# mismatch compounds with depth. At 32 px the last stage of tf_efficientnetv2_b2 is 1x1, so one batch of 16 gives
# it 16 values per channel: after the 1-epoch fit of `catdog demo --image-size 32 --cats 24` (21 training images),
# eval inputs of the last layers sat up to 200 running standard deviations from their running means, activations
# reached 1e4 and logits 230 (test loss 78.6), and float32 torch was 0.55 logits away from float64 torch on the
# test images, 10 on random ones, so `catdog export` rightly refused (onnxruntime 11.6 away). Measured over eleven
# 1-epoch runs with 16 to 256 values at the last stage (24 to 200 cats at 32 px, 16 images at 64 to 128 px, random
# stand-in "pretrained" weights): test losses up to 78.6, float32 up to 0.55 off on the test images, nine of
# the eleven exports refused. Keeping the running statistics of the layers under 512 values, all eleven exported
# (largest difference 6.3e-5), float32 within 1e-4 of float64 on the test images, test losses 0.59 to 0.70 (4.1
# for 16 images at 96 px, from 8.9). Runs with 512 values or more (the first-try run of test_short_runs.py,
# the default demo) are unchanged, and the former does not collapse even when its last stage keeps them. A floor
# on the variances does not help: the near-zero ones (down to 1e-11) are 1x1 depthwise convolutions with a tiny
# centre weight, whose gain eps already bounds; flooring them at 1e-2 still left an export 21.8 off.


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
    min_values: int = DEFAULT_BN_MIN_VALUES,
) -> int:
    """Re-estimate the BatchNorm layers' running statistics from ``batches``; returns the batches used.

    ``batches`` yields image tensors or ``(images, ...)`` tuples (a training loader); at most
    ``max_batches`` are read. The statistics are reset and replaced by the exact average over those
    batches for the current weights (:func:`torch.optim.swa_utils.update_bn`), so they match the weights
    however few steps have run; layer momenta and the train/eval mode are restored. A layer that saw fewer
    than ``min_values`` values per channel (images x height x width over the batches read: the deep, small
    layers of a small run) keeps the statistics it had, since so few values misdescribe its eval-mode inputs
    (see :data:`DEFAULT_BN_MIN_VALUES`). Nothing changes when ``batches`` holds no batch of two images or more.
    Runs with gradients off, also inside Lightning's inference mode.
    """
    from torch.optim.swa_utils import update_bn

    # train-mode BatchNorm cannot normalise a single image: such batches are skipped
    usable = (b for b in itertools.islice(batches, max_batches) if len(b[0] if isinstance(b, list | tuple) else b) > 1)
    first = next(usable, None)
    layers = batchnorm_layers(network)
    seen = dict.fromkeys(layers, 0)
    used = 0
    if not layers or (first is None and _world_size() == 1):
        return 0

    def counted() -> Iterator[Any]:
        nonlocal used
        for batch in itertools.chain([first], usable):
            used += 1
            yield batch

    def count(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen[layer] += inputs[0].numel() // inputs[0].shape[1]  # type: ignore[index]

    with torch.inference_mode(False), torch.no_grad():
        kept = {layer: [buffer.clone() for buffer in _statistics(layer)] for layer in layers}
        if first is not None:
            hooks = [layer.register_forward_pre_hook(count) for layer in layers]
            try:
                update_bn(counted(), network, device=device)
            finally:
                for hook in hooks:
                    hook.remove()
        if _world_size() > 1:  # every process: the same statistics and the same decisions below
            used, seen = _reduce_estimates(layers, used, seen)
        for layer in layers:
            if seen.get(layer, 0) < min_values:
                for buffer, old in zip(_statistics(layer), kept[layer], strict=True):
                    buffer.copy_(old)
    return used


def average_batchnorm_statistics(network: nn.Module) -> int:
    """Average every BatchNorm layer's running mean and variance across the processes of a distributed run.

    Each process of a data-parallel fit updates its running statistics with its own batches; averaged, every
    process evaluates (and rank 0 saves) the same model. Returns the number of processes (1: nothing done).
    """
    world = _world_size()
    if world > 1:
        with torch.inference_mode(False), torch.no_grad():
            _reduce_estimates(batchnorm_layers(network), 1, {})
    return world


def _world_size() -> int:
    """The number of processes of the default process group; 1 outside a distributed run."""
    distributed = torch.distributed
    return distributed.get_world_size() if distributed.is_available() and distributed.is_initialized() else 1


def _reduce_estimates(
    layers: list[nn.modules.batchnorm._BatchNorm], used: int, seen: dict[Any, int]
) -> tuple[int, dict[Any, int]]:
    """Replace every process's running means and variances by their average weighted by ``used`` (batches read);
    returns the batches and the values per channel of every process together."""
    tracked = [layer for layer in layers if layer.running_mean is not None and layer.running_var is not None]
    if not tracked:
        return used, seen
    device = tracked[0].running_mean.device  # type: ignore[union-attr]
    stats = torch.cat([torch.cat([layer.running_mean, layer.running_var]) for layer in tracked])  # type: ignore[list-item]
    counts = torch.tensor([used, *(seen.get(layer, 0) for layer in tracked)], dtype=torch.float64, device=device)
    weighted = stats.double() * used
    torch.distributed.all_reduce(weighted)
    torch.distributed.all_reduce(counts)
    total = counts[0].item()
    if total > 0:
        offset = 0
        for layer in tracked:
            size = layer.num_features
            mean, var = weighted[offset : offset + size], weighted[offset + size : offset + 2 * size]
            layer.running_mean.copy_(mean / total)  # type: ignore[union-attr]
            layer.running_var.copy_(var / total)  # type: ignore[union-attr]
            offset += 2 * size
    return int(total), {layer: int(c) for layer, c in zip(tracked, counts[1:].tolist(), strict=True)}


def _statistics(layer: nn.modules.batchnorm._BatchNorm) -> list[torch.Tensor]:
    """A BatchNorm layer's running statistics (the buffers that exist: mean, variance, batches tracked)."""
    return [b for b in (layer.running_mean, layer.running_var, layer.num_batches_tracked) if b is not None]
