"""The timm network: built offline (local weights, the hub cache, or from scratch) and its preprocessing.

* :func:`build_network` creates a timm model with a 2-class head, optionally from local weights
  (``pretrained_file``) or the hub cache, never from the network.
* :func:`preprocess_config_for` (from :mod:`catdog.data.timm_config`, where it lives with
  :data:`DEFAULT_MODEL`) turns timm's data config into the preprocessing shared by training, export and serving.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catdog import CLASSES, CatDogError
from catdog.data.timm_config import DEFAULT_MODEL, preprocess_config_for
from catdog.training.batchnorm import DEFAULT_BN_MOMENTUM, set_bn_momentum

__all__ = [
    "DEFAULT_MODEL",
    "build_network",
    "count_parameters",
    "hub_cached_weights",
    "preprocess_config_for",
    "set_backbone_trainable",
]

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


def _zero_head(network: nn.Module) -> nn.Module:
    head = network.get_classifier() if hasattr(network, "get_classifier") else None
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    return network
