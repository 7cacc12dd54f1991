"""Shared fixtures: generated Kaggle-layout sources and a fused dataset, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from catdog.sample_data import SampleData, generate

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

#: Small enough for CPU tests, large enough for a breed-disjoint split and a learning signal.
SAMPLE = dict(cats=120, dogs_per_breed=12, breeds=8, size=64, seed=0)
CAT_TRAIN, CAT_TEST = 84, 36


@pytest.fixture(scope="session")
def sample_sources(tmp_path_factory: pytest.TempPathFactory) -> SampleData:
    """Both Kaggle layouts as folders (no corrupt files)."""
    return generate(tmp_path_factory.mktemp("kaggle"), **SAMPLE)


@pytest.fixture(scope="session")
def fused_dataset(tmp_path_factory: pytest.TempPathFactory, sample_sources: SampleData) -> Path:
    """``dataset/{train,test}/{cat,dog}`` fused from :func:`sample_sources`. Treat it as read-only."""
    from catdog.fusion import fuse

    out = tmp_path_factory.mktemp("fused") / "dataset"
    fuse(
        sample_sources.cats_source,
        sample_sources.dogs_source,
        out,
        cat_train=CAT_TRAIN,
        cat_test=CAT_TEST,
        seed=42,
        progress=False,
    )
    return out
