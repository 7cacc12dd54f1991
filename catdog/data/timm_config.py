"""The default model and the eval preprocessing of a timm model, read from timm's data config.

:data:`DEFAULT_MODEL` is the timm model catdog trains unless told otherwise; :func:`preprocess_config_for`
turns timm's data config for a model (mean, std, interpolation, crop) into the
:class:`~catdog.data.transforms.PreprocessConfig` shared by training, export and serving. The data module
uses it for the default model when no model gives it its preprocessing; :mod:`catdog.training.network`
uses it for the network it builds. timm is imported only when it is called (no torch at import time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from catdog.data.transforms import PreprocessConfig

if TYPE_CHECKING:
    from torch import nn

DEFAULT_MODEL = "tf_efficientnetv2_b2"

_INTERPOLATIONS = {"nearest", "bilinear", "bicubic", "lanczos"}


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
        interpolation=interpolation if interpolation in _INTERPOLATIONS else "bicubic",
    )
