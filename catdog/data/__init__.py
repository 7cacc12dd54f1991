"""Data: sample data, fusion of the Kaggle downloads, splits, the eval transform, the data module.

Owns everything between the downloads and a batch: :mod:`~catdog.data.sample_data` (generated data in
both Kaggle layouts), :mod:`~catdog.data.fusion` (``catdog fuse``), :mod:`~catdog.data.splits`
(validation files), :mod:`~catdog.data.transforms` (the one eval preprocessing, torch-free),
:mod:`~catdog.data.timm_config` (the default model and its preprocessing, from timm's data config) and
:mod:`~catdog.data.datamodule` (the ``LightningDataModule``). May import only :mod:`catdog` itself,
:mod:`catdog.utils` and :mod:`catdog.config_files`; never training or anything above it.

``from catdog.data import CatDogDataModule`` works; torch and Lightning are imported only then, so the
torch-free modules here (transforms, splits, fusion) stay light for ``catdog serve`` and ``catdog fuse``.
"""

from typing import Any

_LAZY = {"CatDogDataModule", "EpochSampler"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from catdog.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'catdog.data' has no attribute {name!r}")
