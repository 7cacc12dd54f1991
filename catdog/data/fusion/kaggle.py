"""The two Kaggle layouts: which files are cats, which are dogs of which breed, and the breed split.

Every file of a source becomes an :class:`~catdog.data.fusion.records.Item`, so the manifest lists them all:
images to place (status ``ok`` until checked), files fusion leaves alone on purpose (``unused``, and the
``labels`` file) and unexpected files beside the images (``unrecognised``, ``no_label``).
"""

from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path

import pandas as pd

from catdog import CatDogError
from catdog.data.fusion.records import Item
from catdog.data.fusion.sources import SourceFile, basename, folder_of
from catdog.data.splits import is_image_name

_KAGGLE_NAME = re.compile(r"^(cat|dog)\.(\d+)\.[^.]+$", re.IGNORECASE)
COMPETITION_DOGS = "dogs come from Dog Breed Identification"


def kaggle_name(name: str) -> tuple[str, int] | None:
    """``("cat", 12)`` for ``cat.12.jpg`` (any image extension), ``("dog", n)`` for ``dog.<n>.*``, else None."""
    match = _KAGGLE_NAME.match(name)
    if match is None or not is_image_name(name):
        return None
    return match.group(1).lower(), int(match.group(2))


def list_cats(files: list[SourceFile], location: Path) -> tuple[list[Item], list[Item]]:
    """Cats (``cat.<n>.jpg``, by number) and every other file of the "Dogs vs. Cats" source.

    The competition's own dogs (``dog.<n>.jpg``) and its other files (``test1/``, the sample CSV) are
    listed as ``unused``; unexpected files beside the images as ``unrecognised``.
    """
    named = {f.name: kaggle_name(basename(f.name)) for f in files}
    image_folders = {folder_of(f.name) for f in files if named[f.name] is not None}
    cats: list[tuple[int, Item]] = []
    others: list[Item] = []
    for f in files:
        kind = named[f.name]
        if kind is not None and kind[0] == "cat":
            cats.append((kind[1], Item(f, "cat")))
        elif kind is not None:
            others.append(Item(f, "dog", status="unused", detail=COMPETITION_DOGS))
        elif folder_of(f.name) in image_folders:
            others.append(Item(f, "", status="unrecognised", detail="not named cat.<n>.jpg or dog.<n>.jpg"))
        else:
            others.append(Item(f, "", status="unused", detail="not a training image (only train/cat.<n>.jpg)"))
    if not cats:
        raise CatDogError(
            f"cats source {location}: found no cat.<n>.jpg files. Point --cats-source at the Kaggle "
            "'Dogs vs. Cats' competition zip or folder, its train.zip, or the unpacked train/ folder"
        )
    cats.sort(key=lambda pair: pair[0])
    return [item for _, item in cats], others


def _find_labels(files: list[SourceFile], location: Path) -> tuple[SourceFile, str]:
    """labels.csv and the prefix (folder inside the source) it sits in."""
    candidates = [f for f in files if basename(f.name) == "labels.csv" and "!" not in f.name]
    if not candidates:
        raise CatDogError(
            f"dogs source {location}: labels.csv not found. Point --dogs-source at the Kaggle "
            "'Dog Breed Identification' zip or folder (labels.csv with id,breed and train/<id>.jpg)"
        )
    labels = min(candidates, key=lambda f: f.name.count("/"))
    return labels, labels.name[: -len("labels.csv")]


def read_labels(labels: SourceFile) -> pd.DataFrame:
    """``labels.csv`` as a DataFrame with string columns ``id`` and ``breed``; errors name the file."""
    try:
        frame = pd.read_csv(io.BytesIO(labels.read()), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CatDogError(f"{labels.ref}: cannot be read as CSV ({err})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    if not {"id", "breed"} <= set(frame.columns):
        raise CatDogError(f"{labels.ref}: needs the columns id,breed; found {','.join(frame.columns) or 'none'}")
    frame = frame[["id", "breed"]].apply(lambda column: column.str.strip())
    blank = frame[(frame["id"] == "") | (frame["breed"] == "")]
    if len(blank):
        rows = ", ".join(str(i + 2) for i in blank.index[:5])
        raise CatDogError(f"{labels.ref}: {len(blank)} row(s) with an empty id or breed (lines {rows})")
    duplicated = frame[frame["id"].duplicated()]["id"].tolist()
    if duplicated:
        raise CatDogError(f"{labels.ref}: id listed more than once: {', '.join(duplicated[:5])}")
    return frame


def list_dogs(files: list[SourceFile], location: Path) -> tuple[list[Item], list[Item]]:
    """Dogs with their breeds (in labels.csv order), and every other file of the source."""
    labels_file, prefix = _find_labels(files, location)
    labels = read_labels(labels_file)
    ids = labels["id"].tolist()  # plain lists: iterating pandas columns costs microseconds per value
    breed_of = dict(zip(ids, labels["breed"].tolist(), strict=True))
    train_prefix = f"{prefix}train/"
    images: dict[str, SourceFile] = {}
    others: list[Item] = []
    for f in files:
        relative = f.name[len(train_prefix) :]
        stem = os.path.splitext(relative)[0]
        if f is labels_file:
            others.append(Item(f, "", status="labels", detail="the breed of every dog id (read, not copied)"))
        elif not f.name.startswith(train_prefix) or "!" in f.name:
            others.append(Item(f, "", status="unused", detail="not a training image (only train/<id>.jpg)"))
        elif is_image_name(relative) and "/" not in relative and stem in breed_of:
            images[stem] = f
        elif is_image_name(relative) and "/" not in relative:
            others.append(Item(f, "dog", status="no_label", detail=f"{stem} is not in labels.csv"))
        else:
            others.append(Item(f, "dog", status="unrecognised", detail="not an image file named <id>.jpg"))
    missing = [i for i in ids if i not in images]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CatDogError(
            f"{labels_file.ref}: {len(missing)} id(s) have no image in {location}/{train_prefix}: {shown}. "
            "Is the source completely downloaded and unpacked?"
        )
    dogs = [Item(images[i], "dog", breed=breed_of[i]) for i in ids]
    return dogs, others


def split_breeds(
    breeds: list[str], seed: int, test_fraction: float | None = None, test_breeds: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """Seeded split of the unique breeds into (train, test); ``test_breeds`` fixes the test side."""
    unique = sorted(set(breeds))
    if len(unique) < 2:
        raise CatDogError(f"need at least two dog breeds to split by breed, found {len(unique)}")
    if test_breeds is not None:
        unknown = sorted(set(test_breeds) - set(unique))
        if unknown:
            raise CatDogError(f"--test-breeds names breed(s) not in labels.csv: {', '.join(unknown)}")
        test = sorted(set(test_breeds))
    else:
        assert test_fraction is not None
        if not 0.0 < test_fraction < 1.0:
            raise CatDogError(f"--test-breed-fraction must be between 0 and 1, got {test_fraction}")
        n_test = min(len(unique) - 1, max(1, round(test_fraction * len(unique))))
        shuffled = unique.copy()
        random.Random(seed).shuffle(shuffled)
        test = sorted(shuffled[:n_test])
    train = sorted(set(unique) - set(test))
    if not train or not test:
        raise CatDogError("the breed split leaves one side without dogs; choose other --test-breeds")
    return train, test


def read_breed_file(path: Path) -> list[str]:
    """The breeds of a ``--test-breeds`` file: one per line, ``#`` starts a comment."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CatDogError(f"--test-breeds {path}: cannot read ({getattr(err, 'strerror', None) or err})") from err
    breeds = [line.split("#")[0].strip() for line in lines]
    breeds = [b for b in breeds if b]
    if not breeds:
        raise CatDogError(f"--test-breeds {path}: lists no breed (one breed per line)")
    return breeds
