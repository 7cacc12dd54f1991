"""The keras_baselines tests' data: a small copy of the fused test dataset (one per module)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from catdog import CLASSES


@pytest.fixture(scope="module")
def tiny_dataset(fused_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the fused dataset: 10 train and 4 test images per class."""
    out = tmp_path_factory.mktemp("keras_data") / "dataset"
    for split, keep in (("train", 10), ("test", 4)):
        for name in CLASSES:
            (out / split / name).mkdir(parents=True)
            for path in sorted((fused_dataset / split / name).glob("*.jpg"))[:keep]:
                shutil.copy2(path, out / split / name / path.name)
    return out
