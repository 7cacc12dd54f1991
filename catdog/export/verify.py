"""Verification of an exported ONNX file against torch, and why they disagree when they do.

:func:`verify_onnx` runs ``onnx.checker`` and compares onnxruntime with the torch network on random batches;
past ``atol`` it raises :class:`ExportError`, whose message :func:`explain_disagreement` writes: torch not
deterministic, the exported graph computing something else, or a numerically ill-conditioned network (float32
torch itself far from float64 torch, with the layer where its error grows and the first BatchNorm layer whose
inputs its statistics do not describe).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from catdog import CatDogError

if TYPE_CHECKING:
    from torch import nn

#: Names of the graph's input and output.
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ExportError(CatDogError):
    """The exported model failed its verification (checker or onnxruntime vs torch)."""


def verify_onnx(
    path: str | os.PathLike[str],
    network: nn.Module,
    image_size: int,
    batch_sizes: Sequence[int] = (1, 3),
    atol: float = 1e-4,
    seed: int = 0,
    label: str | os.PathLike[str] | None = None,
) -> float:
    """``onnx.checker`` plus onnxruntime vs ``network`` on random batches; returns the max abs difference.

    Raises :class:`ExportError` when the checker fails or the difference is above ``atol`` (or NaN); the
    message names the file as ``label`` (default ``path``) and says why (:func:`explain_disagreement`).
    """
    import onnx
    import onnxruntime as ort
    import torch

    name = path if label is None else label
    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except Exception as err:  # onnx raises ValidationError / InferenceError
        raise ExportError(f"{name}: onnx.checker rejected the exported model: {err}") from err
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst, worst_case = 0.0, None
    network.eval()
    for batch in batch_sizes:
        images = torch.randn(batch, 3, image_size, image_size, generator=generator)
        with torch.inference_mode():
            expected = network(images).float().numpy()
        (actual,) = session.run(None, {INPUT_NAME: images.numpy()})
        if actual.shape != expected.shape:
            raise ExportError(f"{name}: onnxruntime output shape {actual.shape} != torch {expected.shape}")
        diff = float(np.abs(actual - expected).max())
        if not diff <= worst:  # also keeps a NaN
            worst, worst_case = diff, (images, actual)
    if not worst <= atol:
        images, actual = worst_case  # type: ignore[misc]
        raise ExportError(
            f"{name}: onnxruntime and torch disagree (max abs difference {worst:.3g} > {atol:g}); the file was not "
            f"written. {explain_disagreement(network, images, actual, atol)}"
        )
    return worst


#: Relative float32 error (against float64) past which a layer's output counts as lost to rounding.
LOST_TO_ROUNDING = 1e-4
#: RMS distance, in running standard deviations, past which a BatchNorm layer's statistics misdescribe its input.
BN_MISFIT_Z = 3.0


def explain_disagreement(network: nn.Module, images: Any, onnx_output: np.ndarray, atol: float = 1e-4) -> str:
    """Why onnxruntime's ``onnx_output`` for ``images`` differs from ``network`` (torch, eval mode), in words.

    Float64 torch on a copy of the network is the reference: when float32 torch is within ``atol`` of it, the
    exported graph computes something else; when float32 torch itself is not, the network is numerically
    ill-conditioned (no float32 runtime can reproduce torch's rounding), and the message names the image, the
    first layer whose float32 output is off by more than :data:`LOST_TO_ROUNDING` relative, and the first
    BatchNorm layer whose eval inputs lie more than :data:`BN_MISFIT_Z` running standard deviations (RMS) from
    its running mean. A network that answers the same input differently twice is reported as such.
    """
    import copy

    import torch

    network.eval()
    with torch.inference_mode():
        first, again = network(images).float(), network(images).float()
    if not torch.allclose(first, again, rtol=0, atol=0, equal_nan=True):
        return (
            "torch itself gives different answers for the same input in eval mode (a random operation in the "
            "forward pass?), so no exported file can match it."
        )
    reference = copy.deepcopy(network).double().eval()
    with torch.inference_mode():
        exact = reference(images.double())
    torch_error = (first.double() - exact).abs()
    torch_off, onnx_off = float(torch_error.max()), float((torch.from_numpy(onnx_output).double() - exact).abs().max())
    if torch_off <= atol:
        return (
            f"float32 torch is within {torch_off:.2g} of float64 torch but onnxruntime is "
            f"{onnx_off:.3g} away: the exported graph computes something else. Check that the network "
            "was built with exportable=True and is deterministic in eval."
        )
    index = int((torch_error.flatten(1).amax(dim=1) if torch_error.ndim > 1 else torch_error).argmax())
    image = images[index : index + 1]
    outputs32, zscores = _layer_outputs(network, image)
    outputs64, _ = _layer_outputs(reference, image.double())
    errors = {
        name: float((out - outputs64[name]).norm() / outputs64[name].norm().clamp_min(1e-30))
        for name, out in outputs32.items()
        if name in outputs64
    }
    lost = next(((name, error) for name, error in errors.items() if error > LOST_TO_ROUNDING), None)
    peaks = {name: float(out.abs().max()) for name, out in outputs64.items() if out.numel()}
    where = ""
    if peaks:
        peak = max(peaks, key=peaks.__getitem__)
        where = f" Its activations reach {peaks[peak]:.3g} (at {peak!r})"
        where += f"; its float32 error passes {LOST_TO_ROUNDING:g} relative at {lost[0]!r}." if lost else "."
    return (
        f"The network is numerically ill-conditioned: on image {index} of that random batch, float32 torch itself "
        f"is {torch_off:.3g} away from float64 torch (onnxruntime: {onnx_off:.3g}), so no float32 "
        f"runtime can reproduce its answers.{where}{_batchnorm_misfit(zscores)} Train on more images or for longer "
        "before exporting."
    )


def _batchnorm_misfit(zscores: dict[str, float]) -> str:
    """A sentence naming the first BatchNorm layer whose running statistics misdescribe its input ('' if none)."""
    misfit = next(((name, z) for name, z in zscores.items() if z > BN_MISFIT_Z), None)
    if misfit is None:
        return ""
    largest = max(zscores, key=zscores.__getitem__)
    return (
        f" BatchNorm layer {misfit[0]!r} is the first whose eval inputs lie {misfit[1]:.3g} running standard "
        f"deviations (RMS) from its running mean, {zscores[largest]:.3g} at {largest!r}: its running "
        "statistics do not describe the eval-mode activations (typically estimated on too few images, or "
        "left from too few training steps)."
    )


def _layer_outputs(network: nn.Module, images: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """Every submodule's tensor output for ``images`` (float64 copies, in call order), and the RMS z-score of
    each BatchNorm layer's input against its running statistics."""
    import torch

    outputs: dict[str, torch.Tensor] = {}
    zscores: dict[str, float] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor) and name not in outputs:
                outputs[name] = output.detach().double().clone()
            mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and mean is not None and var is not None:
                shape = (1, -1) + (1,) * (inputs[0].ndim - 2)
                z = (inputs[0].double() - mean.double().view(shape)) / (var.double().view(shape) + module.eps).sqrt()
                zscores[name] = float(z.pow(2).mean().sqrt())

        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in network.named_modules() if name]
    try:
        with torch.inference_mode():
            network(images)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, zscores
