"""The validation split every trainer shares, and file lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from catdog import CatDogError
from catdog.data.splits import read_file_list, relative_name, split_train, stratified_split, write_file_list


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


def _breeds_by_file(data: Path) -> dict[str, str]:
    """``train/dog/...`` -> breed, read with pandas from the manifest ``catdog fuse`` wrote (the ground truth)."""
    import pandas as pd

    manifest = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    dogs = manifest[(manifest.split == "train") & (manifest.label == "dog") & (manifest.status == "ok")]
    return dict(zip(dogs.destination, dogs.breed, strict=True))


def test_breed_split_holds_out_whole_breeds(fused_dataset: Path) -> None:
    breeds = _breeds_by_file(fused_dataset)
    split = split_train(fused_dataset, 0.15, seed=42, val_split="breed")
    random = split_train(fused_dataset, 0.15, seed=42)
    val, train = set(split.val_names(fused_dataset)), {relative_name(p, fused_dataset) for p in split.train_paths}
    assert not val & train and len(val) + len(train) == len(random.val_paths) + len(random.train_paths)
    val_breeds = {breeds[name] for name in val if name.startswith("train/dog/")}
    train_breeds = {breeds[name] for name in train if name.startswith("train/dog/")}
    assert val_breeds and train_breeds and not val_breeds & train_breeds  # no breed on both sides
    # Every dog of a validation breed validates; the cats are the random split's cats.
    assert {name for name, breed in breeds.items() if breed in val_breeds} == {n for n in val if "/dog/" in n}
    cats = {name for name in random.val_names(fused_dataset) if name.startswith("train/cat/")}
    assert cats == {n for n in val if n.startswith("train/cat/")}
    # The dogs validating are val_fraction of them, rounded up to whole breeds.
    dogs_per_breed = {b: sum(1 for v in breeds.values() if v == b) for b in set(breeds.values())}
    wanted, n_val_dogs = round(0.15 * len(breeds)), sum(1 for n in val if "/dog/" in n)
    assert wanted <= n_val_dogs < wanted + max(dogs_per_breed.values())
    assert split_train(fused_dataset, 0.15, seed=42, val_split="breed") == split  # seeded
    other = split_train(fused_dataset, 0.15, seed=7, val_split="breed")
    assert {breeds[n] for n in other.val_names(fused_dataset) if "/dog/" in n} != val_breeds


def test_breed_split_errors_name_the_problem(fused_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(CatDogError, match="val_split must be one of random, breed"):
        split_train(fused_dataset, val_split="breeds")
    data = _dataset(tmp_path / "no_manifest")
    with pytest.raises(CatDogError, match=r"manifest.csv: not found.*val_split random"):
        split_train(data, val_split="breed")
    (data / "manifest.csv").write_text(
        "split,label,breed,source,destination,sha256,size,status,detail\n"
        + "".join(f"train,dog,beagle,s,train/dog/dog.{i}.jpg,h,1,ok,\n" for i in range(17))
    )
    with pytest.raises(CatDogError, match="2 or more breeds in train/, not 1"):
        split_train(data, val_split="breed")
    (data / "train" / "dog" / "dog.99.jpg").write_bytes(b"x")
    with pytest.raises(CatDogError, match=r"train/dog/dog.99.jpg \(and 0 more\): no breed in manifest.csv"):
        split_train(data, val_split="breed")
