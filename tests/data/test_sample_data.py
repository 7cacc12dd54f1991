"""catdog sample-data: the two Kaggle layouts, real JPEG files, deterministic for a seed."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from catdog import CatDogError
from catdog.cli import main as catdog
from catdog.data.sample_data import generate


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_folder_layouts_hold_real_jpegs(tmp_path: Path) -> None:
    data = generate(tmp_path, cats=6, dogs_per_breed=3, breeds=4, size=40)
    cats = sorted(Path(data.cats_source, "train").glob("cat.*.jpg"))
    assert [p.name for p in cats] == sorted(f"cat.{n}.jpg" for n in range(6))
    assert list(Path(data.cats_source, "train").glob("dog.*.jpg"))
    assert (Path(data.cats_source) / "sampleSubmission.csv").exists()
    assert list(Path(data.cats_source, "test1").glob("*.jpg"))
    labels = pd.read_csv(Path(data.dogs_source) / "labels.csv")
    assert list(labels.columns) == ["id", "breed"]
    assert len(labels) == 12 and labels["breed"].nunique() == 4
    assert labels["id"].str.fullmatch(r"[0-9a-f]{32}").all()
    for image_id in labels["id"]:
        with Image.open(Path(data.dogs_source, "train", f"{image_id}.jpg")) as image:
            assert image.format == "JPEG" and image.height == 40
            image.load()


def test_zip_layouts_match_kaggle(tmp_path: Path) -> None:
    data = generate(tmp_path, cats=4, dogs_per_breed=2, breeds=2, size=32, as_zip=True)
    outer = zipfile.ZipFile(data.cats_source)
    assert set(outer.namelist()) == {"train.zip", "test1.zip", "sampleSubmission.csv"}
    inner = zipfile.ZipFile(io.BytesIO(outer.read("train.zip")))
    assert {n for n in inner.namelist() if n.startswith("train/cat.")} == {f"train/cat.{i}.jpg" for i in range(4)}
    dogs = zipfile.ZipFile(data.dogs_source)
    names = dogs.namelist()
    assert "labels.csv" in names and "sample_submission.csv" in names
    assert sum(n.startswith("train/") for n in names) == 4


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = dict(cats=5, dogs_per_breed=2, breeds=3, size=32)
    generate(tmp_path / "a", seed=7, **kwargs)
    generate(tmp_path / "b", seed=7, **kwargs)
    generate(tmp_path / "c", seed=8, **kwargs)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_corrupt_files_are_planted_and_undecodable(tmp_path: Path) -> None:
    data = generate(tmp_path, cats=6, dogs_per_breed=3, breeds=2, size=32, corrupt=2)
    assert len(data.corrupt_files) == 4
    for name in data.corrupt_files:
        root = data.cats_source if name.startswith("train/cat.") else data.dogs_source
        with pytest.raises(OSError), Image.open(Path(root) / name) as image:
            image.load()


def test_cats_and_dogs_differ_and_breeds_differ(tmp_path: Path) -> None:
    """Not a learnability proof (the training tests show that), but the classes must not be identical
    in distribution: mean colour per breed differs between breeds."""
    data = generate(tmp_path, cats=4, dogs_per_breed=6, breeds=3, size=48)
    labels = pd.read_csv(Path(data.dogs_source) / "labels.csv")
    means = {
        breed: np.mean(
            [
                np.asarray(Image.open(Path(data.dogs_source, "train", f"{i}.jpg")), dtype=float).mean((0, 1))
                for i in group["id"]
            ],
            axis=0,
        )  # fmt: skip
        for breed, group in labels.groupby("breed")
    }
    values = list(means.values())
    assert all(np.abs(values[i] - values[j]).max() > 5 for i in range(3) for j in range(i + 1, 3))


def test_cli_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sample-data", "--out", str(tmp_path), "--cats", "3", "--breeds", "2", "--dogs-per-breed", "2"]
    assert catdog(args) == 0
    assert "catdog fuse --cats-source" in capsys.readouterr().out
    assert catdog(args) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert catdog([*args, "--force"]) == 0
    with pytest.raises(CatDogError, match="--breeds"):
        generate(tmp_path / "x", breeds=1)
