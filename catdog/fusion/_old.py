"""``catdog fuse``: cats from Kaggle "Dogs vs. Cats" + breed-split dogs from "Dog Breed Identification".

Output::

    OUT/train/{cat,dog}/*.jpg  OUT/test/{cat,dog}/*.jpg
    OUT/manifest.csv   one row per source file looked at: split, label, breed, source, destination,
                       sha256, size, status, detail (status "ok", or why the file is not in the output)
    OUT/split.json     the arguments, seed, train/test breeds, counts, leakage report, completion flag

Cats are shuffled with the seed and the first ``cat_train`` usable ones go to train, the next
``cat_test`` to test. Dog breeds are shuffled with the seed and split into train and test breeds;
every image of a breed goes to its breed's side, so no breed is on both sides (checked).

Sources may be folders or the zips Kaggle ships (read in place, nested ``train.zip`` included).
Nothing is lost: files are copied by default, ``move`` deletes a source only after every copy is
verified, a rerun with the same arguments changes nothing (and completes an interrupted run), and a
rerun with other arguments refuses unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from catdog import CLASSES, CatDogError

MODES = ("copy", "hardlink", "symlink", "move")
VERIFY = ("quick", "full")
SPLITS = ("train", "test")
MANIFEST = "manifest.csv"
SPLIT_FILE = "split.json"
MANIFEST_COLUMNS = ("split", "label", "breed", "source", "destination", "sha256", "size", "status", "detail")
CAT_NAME = re.compile(r"^cat\.(\d+)\.(jpe?g|png)$", re.IGNORECASE)
DOG_NAME = re.compile(r"^dog\.(\d+)\.(jpe?g|png)$", re.IGNORECASE)
_KAGGLE_NAME = re.compile(r"^(cat|dog)\.(\d+)\.(jpe?g|png)$", re.IGNORECASE)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_CHUNK = 512
_BATCH = 32


# --------------------------------------------------------------------------------------------------
# Reading sources: folders and (nested) zips behind one small interface
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceFile:
    """One file of a source: ``name`` is its path inside the source, ``ref`` says where it is for users."""

    name: str
    ref: str
    read: Callable[[], bytes] = field(compare=False, repr=False)
    path: Path | None = None  # set for folder sources: hardlink/symlink/move need a real file


class Source(contextlib.ExitStack):
    """A folder or zip archive, listed as :class:`SourceFile` objects (use as a context manager)."""

    def __init__(self, location: str | os.PathLike[str], what: str) -> None:
        super().__init__()
        self.location = Path(location)
        self.what = what
        if not self.location.exists():
            raise CatDogError(f"{what} source {self.location}: no such file or folder")

    def files(self) -> list[SourceFile]:
        if self.location.is_dir():
            found = []
            for folder, _, names in os.walk(self.location):
                relative = os.path.relpath(folder, self.location)
                prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
                for name in names:
                    path = Path(folder, name)
                    found.append(SourceFile(prefix + name, str(path), path.read_bytes, path))
            return sorted(found, key=lambda f: f.name)
        return self._zip_files(self.location, str(self.location))

    def _open_zip(self, location: Path | io.IOBase, ref: str) -> zipfile.ZipFile:
        try:
            return self.enter_context(zipfile.ZipFile(location))
        except zipfile.BadZipFile as err:
            raise CatDogError(f"{self.what} source {ref}: not a valid zip file ({err})") from err

    def _zip_files(self, location: Path | io.IOBase, ref: str) -> list[SourceFile]:
        archive = self._open_zip(location, ref)
        files: list[SourceFile] = []
        for info in archive.infolist():
            if info.is_dir():
                continue
            member_ref = f"{ref}!{info.filename}"
            if info.filename.lower().endswith(".zip"):
                # Nested archive (the competition zip holds train.zip): spool it to a seekable temp file.
                spool = self.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (closed by the stack)
                with archive.open(info) as member:
                    shutil.copyfileobj(member, spool, 1 << 20)
                spool.seek(0)
                nested = self._zip_files(spool, member_ref)  # type: ignore[arg-type]
                files.extend(SourceFile(f"{info.filename}!{f.name}", f.ref, f.read) for f in nested)
            else:
                files.append(SourceFile(info.filename, member_ref, _zip_reader(archive, info)))
        return files


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    return lambda: archive.read(info)


def _basename(name: str) -> str:
    return name.rsplit("!", 1)[-1].rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------------
# Verifying and placing files
# --------------------------------------------------------------------------------------------------
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_START = b"\x89PNG\r\n\x1a\n"


def check_image(data: bytes, full: bool = False) -> str | None:
    """None if ``data`` is a usable image, else the reason.

    ``quick`` checks the signature and that the file ends with its end marker (a truncated download does
    not); ``full`` decodes every pixel with Pillow.
    """
    if not data:
        return "empty file"
    if not full:
        if data.startswith(JPEG_START):
            if data.endswith(JPEG_END) or data.rstrip(b"\x00\r\n ").endswith(JPEG_END):
                return None
            return "truncated JPEG (no end-of-image marker)"
        if data.startswith(PNG_START):
            return None if b"IEND" in data[-16:] else "truncated PNG (no IEND chunk)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in {"JPEG", "PNG"}:
                return f"unsupported image format {image.format}"
            image.load()
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as err:
        return f"corrupt image ({err})"
    return None


@dataclass
class Item:
    """One source file and what fusion decided for it (a manifest row)."""

    file: SourceFile
    label: str
    breed: str = ""
    split: str = ""
    status: str = "ok"
    detail: str = ""
    sha256: str = ""
    size: int = 0
    destination: str = ""

    def row(self) -> dict[str, object]:
        return {
            "split": self.split or "excluded",
            "label": self.label,
            "breed": self.breed,
            "source": self.file.ref,
            "destination": self.destination,
            "sha256": self.sha256,
            "size": self.size,
            "status": self.status,
            "detail": self.detail,
        }


def _inspect(item: Item, full: bool) -> tuple[Item, bytes]:
    try:
        data = item.file.read()
    except OSError as err:
        item.status, item.detail = "unreadable", str(err)
        return item, b""
    item.size, item.sha256 = len(data), hashlib.sha256(data).hexdigest()
    problem = check_image(data, full)
    if problem:
        item.status = "not_image" if problem == "not an image" else "corrupt"
        item.detail = problem
    return item, data


def _place_all(placed: list[tuple[Item, bytes]], out: Path, mode: str, fresh: bool) -> None:
    for item, data in placed:
        _place(item, data, out, mode, fresh)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _place(item: Item, data: bytes, out: Path, mode: str, fresh: bool) -> None:
    """Put one verified item at ``out/<destination>``.

    On a ``fresh`` output files are written straight away; otherwise an identical file already there is
    left alone (reruns change nothing) and a different or partial one is replaced. A half-written file
    from an interrupted run is caught the same way, since split.json marks a run complete only at the end.
    """
    target = out / item.destination
    source_path = item.file.path
    if mode == "symlink":
        assert source_path is not None
        link_to = source_path.resolve()
        if not fresh and target.is_symlink() and Path(os.readlink(target)) == link_to:
            return
        target.unlink(missing_ok=True)
        target.symlink_to(link_to)
        return
    if not fresh and target.exists() and not target.is_symlink() and target.stat().st_size == item.size:
        if mode == "hardlink" and source_path is not None and target.samefile(source_path):
            return
        if _sha256_file(target) == item.sha256:
            return
    if mode == "hardlink":
        assert source_path is not None
        target.unlink(missing_ok=True)
        try:
            os.link(source_path, target)
        except OSError as err:
            raise CatDogError(
                f"cannot hardlink {source_path} into {out} ({err.strerror}); hardlinks need the output on "
                "the same filesystem as the source: use --mode copy or --mode symlink"
            ) from err
        return
    if not fresh and target.is_symlink():
        target.unlink()
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)
    if mode == "move" and _sha256_file(target) != item.sha256:
        target.unlink()
        raise CatDogError(f"copy of {item.file.ref} to {target} does not match the source; nothing moved")


# --------------------------------------------------------------------------------------------------
# Listing the two Kaggle layouts
# --------------------------------------------------------------------------------------------------
def _folder(name: str) -> str:
    """The folder part of a source file name (zip nesting included)."""
    return name[: max(name.rfind("/"), name.rfind("!")) + 1]


def list_cats(files: list[SourceFile], location: Path) -> tuple[list[Item], list[Item], int]:
    """Cats (``cat.<n>.jpg``), unexpected files beside them, and the count of competition dogs
    (``dog.<n>.jpg``, not used). Other competition files (``test1/``, the sample CSV) are not read."""
    cats: list[Item] = []
    dogs = 0
    image_folders: set[str] = set()
    for f in files:
        base = _basename(f.name)
        if CAT_NAME.match(base):
            cats.append(Item(f, "cat"))
            image_folders.add(_folder(f.name))
        elif DOG_NAME.match(base):
            dogs += 1
            image_folders.add(_folder(f.name))
    others = [
        Item(f, "cat", status="unrecognised", detail="not named cat.<n>.jpg or dog.<n>.jpg")
        for f in files
        if _folder(f.name) in image_folders
        and not (CAT_NAME.match(_basename(f.name)) or DOG_NAME.match(_basename(f.name)))
    ]
    if not cats:
        raise CatDogError(
            f"cats source {location}: found no cat.<n>.jpg files. Point --cats-source at the Kaggle "
            "'Dogs vs. Cats' competition zip or folder, its train.zip, or the unpacked train/ folder"
        )
    cats.sort(key=lambda item: int(CAT_NAME.match(_basename(item.file.name)).group(1)))  # type: ignore[union-attr]
    return cats, others, dogs


def _find_labels(files: list[SourceFile], location: Path) -> tuple[SourceFile, str]:
    """labels.csv and the prefix (folder inside the source) it sits in."""
    candidates = [f for f in files if _basename(f.name) == "labels.csv" and "!" not in f.name]
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


def list_dogs(files: list[SourceFile], location: Path) -> tuple[list[Item], list[Item], SourceFile]:
    """Dogs with their breeds, unexpected files in train/, and the labels file."""
    labels_file, prefix = _find_labels(files, location)
    labels = read_labels(labels_file)
    breed_of = dict(zip(labels["id"], labels["breed"], strict=True))
    train_prefix = f"{prefix}train/"
    images: dict[str, SourceFile] = {}
    others: list[Item] = []
    for f in files:
        if not f.name.startswith(train_prefix) or "!" in f.name:
            continue
        relative = f.name[len(train_prefix) :]
        stem, suffix = os.path.splitext(relative)
        if suffix.lower() in IMAGE_SUFFIXES and "/" not in relative and stem in breed_of:
            images[stem] = f
        elif suffix.lower() in IMAGE_SUFFIXES and "/" not in relative:
            others.append(Item(f, "dog", status="no_label", detail=f"{stem} is not in labels.csv"))
        else:
            others.append(Item(f, "dog", status="unrecognised", detail="not an image file named <id>.jpg"))
    missing = [i for i in labels["id"] if i not in images]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CatDogError(
            f"{labels_file.ref}: {len(missing)} id(s) have no image in {location}/{train_prefix}: {shown}. "
            "Is the source completely downloaded and unpacked?"
        )
    dogs = [Item(images[i], "dog", breed=breed_of[i]) for i in labels["id"]]
    return dogs, others, labels_file


# --------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------
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


def _read_breed_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise CatDogError(f"--test-breeds {path}: cannot read ({err.strerror})") from err
    breeds = [line.split("#")[0].strip() for line in lines]
    breeds = [b for b in breeds if b]
    if not breeds:
        raise CatDogError(f"--test-breeds {path}: lists no breed (one breed per line)")
    return breeds


# --------------------------------------------------------------------------------------------------
# Fusion
# --------------------------------------------------------------------------------------------------
@dataclass
class FusionResult:
    """What ``fuse`` did: counts per split and label, excluded files, leakage."""

    out: Path
    counts: dict[str, dict[str, int]]
    train_breeds: list[str]
    test_breeds: list[str]
    excluded: list[dict[str, object]]
    leaks: list[dict[str, str]]
    unchanged: bool


def _fingerprint(**kwargs: object) -> dict[str, object]:
    return {k: (str(Path(v).resolve()) if isinstance(v, Path) else v) for k, v in kwargs.items()}


def _previous_run(out: Path) -> dict | None:
    """The split.json of an earlier fusion into ``out``, if any."""
    with contextlib.suppress(json.JSONDecodeError, OSError):
        return json.loads((out / SPLIT_FILE).read_text())
    return None


def _check_out(out: Path, fingerprint: dict[str, object], overwrite: bool) -> bool:
    """Refuse an output folder we must not touch; True when it holds a run with the same arguments."""
    previous = _previous_run(out)
    if previous is not None and previous.get("arguments") == fingerprint:
        return True
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            reason = (
                "was fused with different arguments"
                if previous is not None
                else f"is not empty and holds no {SPLIT_FILE} from a previous fusion"
            )
            raise CatDogError(f"output folder {out} {reason}; choose another --out or pass --overwrite")
        if previous is not None and previous.get("arguments", {}).get("mode") == "move":
            raise CatDogError(
                f"output folder {out} holds the only copies of files moved there by --mode move; "
                "--overwrite would delete them. Choose another --out"
            )
    return False


def _clear_out(out: Path) -> None:
    """Remove what an earlier fusion wrote (and only that) before writing anew."""
    for name in (*SPLITS, MANIFEST, SPLIT_FILE):
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _chunks(items: list[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fuse(
    cats_source: str | os.PathLike[str],
    dogs_source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cat_train: int = 8995,
    cat_test: int = 3505,
    test_breed_fraction: float | None = None,
    test_breeds: list[str] | None = None,
    seed: int = 42,
    mode: str = "copy",
    overwrite: bool = False,
    verify: str = "quick",
    workers: int | None = None,
    progress: bool = True,
) -> FusionResult:
    """Fuse the two Kaggle sources into ``out``; see the module docstring. Returns what was done."""
    if mode not in MODES:
        raise CatDogError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if verify not in VERIFY:
        raise CatDogError(f"--verify must be one of {', '.join(VERIFY)}, got {verify!r}")
    if cat_train < 1 or cat_test < 1:
        raise CatDogError("--cat-train and --cat-test must be at least 1")
    if test_breed_fraction is not None and test_breeds is not None:
        raise CatDogError("give either --test-breed-fraction or --test-breeds, not both")
    if test_breed_fraction is None and test_breeds is None:
        test_breed_fraction = cat_test / (cat_train + cat_test)
    out = Path(out)
    fingerprint = _fingerprint(
        cats_source=Path(cats_source), dogs_source=Path(dogs_source), cat_train=cat_train, cat_test=cat_test,
        test_breed_fraction=test_breed_fraction, test_breeds=sorted(test_breeds) if test_breeds else None,
        seed=seed, mode=mode, verify=verify,
    )  # fmt: skip

    previous = _previous_run(out)
    if mode == "move" and previous and previous.get("arguments") == fingerprint and previous.get("complete"):
        # The sources were moved by the same fusion: nothing left to do.
        return FusionResult(out, previous["counts"], previous["train_breeds"], previous["test_breeds"], [],
                            previous["leaks"], unchanged=True)  # fmt: skip

    rerun = _check_out(out, fingerprint, overwrite)
    with Source(cats_source, "cats") as cats_src, Source(dogs_source, "dogs") as dogs_src:
        if mode != "copy":
            for src in (cats_src, dogs_src):
                if not src.location.is_dir():
                    raise CatDogError(
                        f"--mode {mode} needs folder sources, but {src.location} is a zip; unpack it or use --mode copy"
                    )
        cats, cat_others, competition_dogs = list_cats(cats_src.files(), cats_src.location)
        dogs, dog_others, _ = list_dogs(dogs_src.files(), dogs_src.location)
        if cat_train + cat_test > len(cats):
            raise CatDogError(
                f"asked for {cat_train} train + {cat_test} test = {cat_train + cat_test} cats, but "
                f"{cats_src.location} holds only {len(cats)}; lower --cat-train/--cat-test"
            )
        train_breeds, test_breeds_ = split_breeds([d.breed for d in dogs], seed, test_breed_fraction, test_breeds)
        if not rerun:
            _clear_out(out)
        for split in SPLITS:
            for label in CLASSES:
                (out / split / label).mkdir(parents=True, exist_ok=True)
        if not rerun:
            _write_split(out, fingerprint, train_breeds, test_breeds_, {}, [], complete=False)

        random.Random(seed).shuffle(cats)
        side_of_breed = {breed: "train" for breed in train_breeds} | {breed: "test" for breed in test_breeds_}
        if len(side_of_breed) != len(train_breeds) + len(test_breeds_):
            raise CatDogError("a breed would be on both sides of the split; nothing was written")
        wanted = {"train": cat_train, "test": cat_test}
        taken = {"train": 0, "test": 0}

        def assign_cat(item: Item) -> None:
            for split in SPLITS:
                if taken[split] < wanted[split]:
                    item.split = split
                    taken[split] += 1
                    return
            item.status, item.detail = "unused", "beyond --cat-train + --cat-test"

        def assign_dog(item: Item) -> None:
            item.split = side_of_breed[item.breed]

        workers = workers or min(8, 2 * (os.cpu_count() or 1))
        bar = tqdm(total=len(cats) + len(dogs), desc="fuse", unit="img", disable=not progress)
        with ThreadPoolExecutor(workers) as pool:
            writes = []

            def process(items: list[Item], assign: Callable[[Item], None]) -> None:
                # Work goes to the threads in small batches: one task per batch, not per file.
                batches = list(_chunks(items, _BATCH))
                for results in pool.map(lambda batch: [_inspect(i, verify == "full") for i in batch], batches):
                    bar.update(len(results))
                    placed = []
                    for item, data in results:
                        if item.status != "ok":
                            continue
                        assign(item)
                        if item.split in SPLITS:
                            item.destination = f"{item.split}/{item.label}/{_basename(item.file.name)}"
                            placed.append((item, data))
                    if placed:
                        writes.append(pool.submit(_place_all, placed, out, mode, not rerun))

            for chunk in _chunks(cats, _CHUNK):
                if taken["test"] == wanted["test"]:  # train fills first, so both are full
                    for item in chunk:
                        item.status, item.detail = "unused", "beyond --cat-train + --cat-test"
                    bar.update(len(chunk))
                    continue
                process(chunk, assign_cat)
            for chunk in _chunks(dogs, _CHUNK):
                process(chunk, assign_dog)
            for future in writes:
                future.result()
        bar.close()

    if taken != wanted:
        bad = sum(1 for c in cats if c.status not in {"ok", "unused"})
        raise CatDogError(
            f"only {taken['train']} train + {taken['test']} test usable cats in {cats_source} "
            f"({bad} corrupt or unreadable); lower --cat-train/--cat-test"
        )
    placed_sides: dict[str, set[str]] = defaultdict(set)
    for dog in dogs:
        if dog.split:
            placed_sides[dog.breed].add(dog.split)
    mixed = sorted(breed for breed, sides in placed_sides.items() if len(sides) > 1)
    if mixed:
        raise CatDogError(f"breed(s) ended up in both train and test: {', '.join(mixed)}")

    items = [*cats, *cat_others, *dogs, *dog_others]
    leaks = _find_leaks(items)
    counts = {s: {label: sum(1 for i in items if i.split == s and i.label == label) for label in CLASSES}
              for s in SPLITS}  # fmt: skip
    counts["excluded"] = {
        label: sum(1 for i in items if i.label == label and i.status not in {"ok", "unused"}) for label in CLASSES
    }
    counts["unused"] = {"cat": sum(1 for c in cats if c.status == "unused"), "dog": 0}
    counts["competition_dogs_ignored"] = {"dog": competition_dogs}
    pd.DataFrame([i.row() for i in items], columns=list(MANIFEST_COLUMNS)).to_csv(
        out / f".{MANIFEST}.partial", index=False
    )
    _replace_if_changed(out / f".{MANIFEST}.partial", out / MANIFEST)
    _write_split(out, fingerprint, train_breeds, test_breeds_, counts, leaks, complete=True)
    if mode == "move":
        for item in items:
            if item.split in SPLITS and item.file.path is not None and item.file.path.exists():
                item.file.path.unlink()
    excluded = [i.row() for i in items if i.status not in {"ok", "unused"}]
    return FusionResult(out, counts, train_breeds, test_breeds_, excluded, leaks, unchanged=rerun)


def _find_leaks(items: list[Item]) -> list[dict[str, str]]:
    """Byte-identical images present in both train and test."""
    by_hash: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if item.split in SPLITS:
            by_hash[item.sha256].append(item)
    leaks = []
    for digest, group in by_hash.items():
        splits = {i.split for i in group}
        if len(splits) > 1:
            leaks.append({"sha256": digest, "files": " | ".join(sorted(i.destination for i in group))})
    return leaks


def _replace_if_changed(partial: Path, target: Path) -> None:
    if target.exists() and target.read_bytes() == partial.read_bytes():
        partial.unlink()
    else:
        os.replace(partial, target)


def _write_split(
    out: Path,
    fingerprint: dict[str, object],
    train_breeds: list[str],
    test_breeds: list[str],
    counts: dict[str, dict[str, int]],
    leaks: list[dict[str, str]],
    complete: bool,
) -> None:
    document = {
        "arguments": fingerprint,
        "seed": fingerprint["seed"],
        "classes": list(CLASSES),
        "train_breeds": train_breeds,
        "test_breeds": test_breeds,
        "counts": counts,
        "leaks": leaks,
        "complete": complete,
    }
    partial = out / f".{SPLIT_FILE}.partial"
    partial.write_text(json.dumps(document, indent=2) + "\n")
    _replace_if_changed(partial, out / SPLIT_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="catdog fuse",
        description="Fuse Kaggle 'Dogs vs. Cats' cats and breed-split 'Dog Breed Identification' dogs into "
        "OUT/{train,test}/{cat,dog}/ with manifest.csv and split.json.",
    )
    parser.add_argument("--cats-source", required=True, type=Path,
                        help="Dogs vs. Cats: competition zip or folder, train.zip, or the train/ folder")  # fmt: skip
    parser.add_argument("--dogs-source", required=True, type=Path,
                        help="Dog Breed Identification: zip or folder with labels.csv and train/")  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. dataset")
    parser.add_argument("--cat-train", type=int, default=8995, help="cats for train (default 8995)")
    parser.add_argument("--cat-test", type=int, default=3505, help="cats for test (default 3505)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--test-breed-fraction", type=float,
                       help="share of breeds for test (default: the cats' test share)")  # fmt: skip
    group.add_argument("--test-breeds", type=Path, help="file with one test breed per line")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mode", choices=MODES, default="copy",
                        help="copy (default), hardlink, symlink, or move (after verified copies)")  # fmt: skip
    parser.add_argument("--verify", choices=VERIFY, default="quick",
                        help="quick: header + JPEG end marker (default); full: decode every image")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an output fused with other arguments")
    parser.add_argument("--workers", type=int, default=None, help="parallel file operations")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    result = fuse(
        args.cats_source, args.dogs_source, args.out, cat_train=args.cat_train, cat_test=args.cat_test,
        test_breed_fraction=args.test_breed_fraction,
        test_breeds=_read_breed_file(args.test_breeds) if args.test_breeds else None,
        seed=args.seed, mode=args.mode, overwrite=args.overwrite, verify=args.verify, workers=args.workers,
        progress=not args.no_progress,
    )  # fmt: skip
    c = result.counts
    print(f"{'unchanged (same arguments)' if result.unchanged else 'fused'}: {result.out}")
    for split in SPLITS:
        print(f"  {split:5s}  cat {c[split]['cat']:6d}  dog {c[split]['dog']:6d}")
    print(f"  breeds: {len(result.train_breeds)} train, {len(result.test_breeds)} test (disjoint)")
    if result.excluded:
        print(f"  excluded {len(result.excluded)} file(s), listed in {result.out / MANIFEST}:")
        for row in result.excluded[:10]:
            print(f"    {row['source']}: {row['status']} ({row['detail']})")
    if result.leaks:
        print(f"  WARNING: {len(result.leaks)} byte-identical image(s) in both train and test (leakage):")
        for leak in result.leaks[:10]:
            print(f"    {leak['files']}")
    return 0
