"""The validation split every trainer shares, and file lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from catdog import CatDogError
from catdog.splits import read_file_list, split_train, stratified_split, write_file_list


def _dataset(root: Path, cats: int = 11, dogs: int = 17) -> Path:
    for label, count in (("cat", cats), ("dog", dogs)):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"{label}.{i}.jpg").write_bytes(b"x")
        (folder / "notes.txt").write_text("not an image")
    return root


def test_stratified_split_is_seeded_and_per_class() -> None:
    labels = [0] * 20 + [1] * 40
    train, val = stratified_split(labels, 0.25, seed=3)
    assert sorted(train + val) == list(range(60)) and not set(train) & set(val)
    assert sum(labels[i] == 0 for i in val) == 5 and sum(labels[i] == 1 for i in val) == 10
    assert stratified_split(labels, 0.25, seed=3) == (train, val)
    assert stratified_split(labels, 0.25, seed=4) != (train, val)


def test_file_list_round_trip_reproduces_the_split(tmp_path) -> None:
    data = _dataset(tmp_path / "data")
    seeded = split_train(data, 0.2, seed=5)
    assert all(p.suffix == ".jpg" for p in seeded.train_paths + seeded.val_paths)
    listed = write_file_list(seeded.val_names(data), tmp_path / "val_files.txt")
    assert listed.read_text().splitlines()[0].startswith("train/")
    from_list = split_train(data, val_fraction=0.5, seed=99, val_files=listed)  # fraction and seed are ignored
    assert from_list == seeded


def test_file_list_errors_name_the_problem(tmp_path) -> None:
    data = _dataset(tmp_path / "data")
    listed = tmp_path / "val.txt"
    listed.write_text("train/cat/cat.1.jpg\ntrain/cat/missing.jpg\n")
    with pytest.raises(CatDogError, match="missing.jpg"):
        read_file_list(listed, data)
    listed.write_text("train/cat/notes.txt\n")
    with pytest.raises(CatDogError, match="not images"):
        split_train(data, val_files=listed)
    with pytest.raises(CatDogError, match="not found"):
        split_train(data, val_files=tmp_path / "nope.txt")
