"""Which images make up each split of a fused dataset: listing, the validation split, file lists.

The validation split is random (stratified by class) or, with ``val_split="breed"``, holds out whole dog
breeds as the test split does (breeds read from the ``manifest.csv`` that ``catdog fuse`` writes), so that
validation measures what test measures: dogs of breeds the network has not seen.

Torch-free (numpy only), so every trainer (Lightning, Poutyne, Keras) and ``catdog compare`` choose
exactly the same validation files. A file list is a text file with one path per line, relative to the
dataset root and written with forward slashes (``train/cat/cat.12.jpg``), the same form as the
``destination`` column of ``manifest.csv``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catdog import CLASSES, CatDogError

#: The file ``catdog fuse`` writes beside train/ and test/ (one row per source file; ``catdog.data.fusion``).
MANIFEST = "manifest.csv"
#: Cats ``catdog fuse`` puts in train and test by default: the split of the original work.
DEFAULT_CAT_TRAIN, DEFAULT_CAT_TEST = 8995, 3505
#: How ``train/`` is split into training and validation images.
VAL_SPLITS = ("random", "breed")

#: File name endings read as images, everywhere in catdog.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_name(name: str) -> bool:
    """Whether a file name ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted for a stable order."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_name(p.name))


def labelled_images(split_dir: str | os.PathLike[str]) -> tuple[list[Path], list[int]]:
    """``split_dir/{cat,dog}/*`` as (paths, labels); raises :class:`CatDogError` naming what is missing."""
    split_dir = Path(split_dir)
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(CLASSES):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            raise CatDogError(
                f"{class_dir}: folder not found; the data folder must hold train/{{cat,dog}} and test/{{cat,dog}} "
                "as written by `catdog fuse`"
            )
        found = list_images(class_dir)
        if not found:
            raise CatDogError(f"{class_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        paths += found
        labels += [index] * len(found)
    return paths, labels


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): ``val_fraction`` of every class goes to validation, chosen with ``seed``."""
    if not 0.0 <= val_fraction < 1.0:
        raise CatDogError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    train: list[int] = []
    val: list[int] = []
    for cls in np.unique(labels_array):
        members = np.flatnonzero(labels_array == cls)
        members = members[rng.permutation(len(members))]
        n_val = int(round(len(members) * val_fraction))
        if val_fraction > 0 and len(members) > 1:
            n_val = min(max(n_val, 1), len(members) - 1)
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return sorted(train), sorted(val)


def relative_name(path: str | os.PathLike[str], data_dir: str | os.PathLike[str]) -> str:
    """``path`` relative to ``data_dir`` with forward slashes (the form used in file lists and predictions)."""
    return Path(path).resolve().relative_to(Path(data_dir).resolve()).as_posix()


@dataclass(frozen=True)
class TrainValSplit:
    """The training and validation images of ``train/`` (absolute paths and labels)."""

    train_paths: list[Path]
    train_labels: list[int]
    val_paths: list[Path]
    val_labels: list[int]

    def val_names(self, data_dir: str | os.PathLike[str]) -> list[str]:
        return [relative_name(p, data_dir) for p in self.val_paths]


def split_train(
    data_dir: str | os.PathLike[str],
    val_fraction: float = 0.15,
    seed: int = 42,
    val_files: str | os.PathLike[str] | None = None,
    val_split: str = "random",
) -> TrainValSplit:
    """Split ``data_dir/train`` into training and validation images.

    With ``val_files`` (a file list, see :func:`read_file_list`) exactly those images validate and the other
    arguments are ignored. Otherwise ``val_split`` ``"random"``: a stratified, seeded ``val_fraction`` of each
    class; ``"breed"``: :func:`breed_split` (whole dog breeds, a random ``val_fraction`` of the cats).
    """
    data_dir = Path(data_dir)
    if val_split not in VAL_SPLITS:
        raise CatDogError(f"val_split must be one of {', '.join(VAL_SPLITS)}, got {val_split!r}")
    paths, labels = labelled_images(data_dir / "train")
    if val_files is not None:
        chosen = set(read_file_list(val_files, data_dir))
        names = [relative_name(p, data_dir) for p in paths]
        unknown = chosen - set(names)
        if unknown:
            raise CatDogError(
                f"{val_files}: {len(unknown)} listed file(s) are not images of {data_dir / 'train'} "
                f"(e.g. {sorted(unknown)[0]}); a validation list names files under train/{{cat,dog}}/"
            )
        val_idx = [i for i, name in enumerate(names) if name in chosen]
        train_idx = [i for i, name in enumerate(names) if name not in chosen]
    elif val_split == "breed":
        names = [relative_name(p, data_dir) for p in paths]
        train_idx, val_idx = breed_split(names, labels, training_dog_breeds(data_dir), val_fraction, seed)
    else:
        train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    if not val_idx:
        raise CatDogError(f"the validation split of {data_dir / 'train'} is empty (val_fraction {val_fraction})")
    return TrainValSplit(
        [paths[i] for i in train_idx],
        [labels[i] for i in train_idx],
        [paths[i] for i in val_idx],
        [labels[i] for i in val_idx],
    )


def training_dog_breeds(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The breed of every dog written to ``train/dog/`` (file name relative to ``data_dir`` -> breed), read from
    ``data_dir/manifest.csv``."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise CatDogError(
            f"{path}: not found; a validation split by breed reads each dog's breed from the manifest that "
            "`catdog fuse` writes (use val_split random, or a file list of validation images, otherwise)"
        )
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"destination", "breed"} <= set(rows[0]):
        raise CatDogError(f"{path}: no destination/breed columns; is it a manifest written by `catdog fuse`?")
    return {
        row["destination"]: row["breed"]
        for row in rows
        if (row.get("destination") or "").startswith("train/dog/") and row.get("breed")
    }


def breed_split(
    names: Sequence[str], labels: Sequence[int], breeds: dict[str, str], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, val) with no dog breed on both sides: whole breeds, drawn with ``seed``, go to validation
    until they hold ``val_fraction`` of the dogs (at least one breed, never all); the cats as
    :func:`stratified_split`. ``names`` are relative to the dataset root; ``breeds`` maps the dogs' names."""
    cat_idx = [i for i, label in enumerate(labels) if label == 0]
    dog_idx = [i for i, label in enumerate(labels) if label == 1]
    unknown = [names[i] for i in dog_idx if names[i] not in breeds]
    if unknown:
        raise CatDogError(
            f"{unknown[0]} (and {len(unknown) - 1} more): no breed in {MANIFEST}; a validation split by breed "
            "needs every dog of train/ listed there (rerun `catdog fuse`, or use val_split random)"
        )
    by_breed: dict[str, list[int]] = {}
    for i in dog_idx:
        by_breed.setdefault(breeds[names[i]], []).append(i)
    if len(by_breed) < 2:
        raise CatDogError(f"a validation split by breed needs dogs of 2 or more breeds in train/, not {len(by_breed)}")
    cat_train, cat_val = stratified_split([0] * len(cat_idx), val_fraction, seed)
    order = [sorted(by_breed)[k] for k in np.random.default_rng(seed).permutation(len(by_breed))]
    wanted = round(len(dog_idx) * val_fraction)
    val_breeds: list[str] = []
    held_out = 0
    for breed in order[:-1]:  # one breed at least (when val_fraction > 0), never all of them
        if val_fraction == 0 or (val_breeds and held_out >= wanted):
            break
        val_breeds.append(breed)
        held_out += len(by_breed[breed])
    val = [cat_idx[k] for k in cat_val] + [i for b in val_breeds for i in by_breed[b]]
    train = [cat_idx[k] for k in cat_train] + [i for b in order if b not in val_breeds for i in by_breed[b]]
    return sorted(train), sorted(val)


def write_file_list(names: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """Write a file list (one relative path per line, sorted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in sorted(names)))
    return path


def read_file_list(path: str | os.PathLike[str], data_dir: str | os.PathLike[str]) -> list[str]:
    """Read a file list; every entry must exist under ``data_dir`` (the error names the first that does not)."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError as err:
        raise CatDogError(f"{path}: file list not found") from err
    if not names:
        raise CatDogError(f"{path}: the file list is empty")
    missing = [name for name in names if not (Path(data_dir) / name).is_file()]
    if missing:
        raise CatDogError(f"{path}: {len(missing)} listed file(s) not found under {data_dir}, e.g. {missing[0]}")
    return names
