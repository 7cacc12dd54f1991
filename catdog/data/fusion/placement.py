"""Placing planned files: copy, hardlink, symlink or move, each write checked against the plan's sha256."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from catdog import CLASSES, CatDogError
from catdog.data.fusion.plan import Plan
from catdog.data.fusion.records import MANIFEST, SPLIT_FILE, SPLITS, Item
from catdog.utils import file_sha256

MODES = ("copy", "hardlink", "symlink", "move")
_BAR_STEP = 256  # files between progress bar updates


def write_plan(plan: Plan, out: Path, mode: str, fresh: bool, progress: bool = True) -> int:
    """Put every placed item of ``plan`` under ``out``; returns how many files were (re)written.

    On a ``fresh`` output every file is written; otherwise a file already holding the planned bytes is
    left alone (reruns change nothing) and a missing, partial or different one is written anew. One
    thread writes: creating files in the same folders from several threads was 4-7x slower per file
    (the file system serialises them, and the threads then fight over the lock).
    """
    make_folders(out)
    placed, folder, written = plan.placed, str(out), 0
    with tqdm(total=len(placed), desc="fuse: write", unit="img", disable=not progress) as bar:
        for start in range(0, len(placed), _BAR_STEP):
            for item in placed[start : start + _BAR_STEP]:
                written += place(item, folder, mode, fresh, plan.contents.pop(item.file.ref, None))
            bar.update(min(_BAR_STEP, len(placed) - start))
    return written


def place(item: Item, out: str, mode: str, fresh: bool, data: bytes | None = None) -> bool:
    """Put one planned item at ``out/<destination>``; True when a file was written.

    ``data`` are the bytes the plan checked (copy and move); without them the source is read again and
    must still match the planned sha256.
    """
    target = f"{out}/{item.destination}"
    try:
        if mode == "symlink":
            return _symlink(item, target, fresh)
        if not fresh and _in_place(item, target, mode == "hardlink"):
            return False
        if not fresh and os.path.lexists(target):
            os.unlink(target)  # never write through an old link into another file
        if mode == "hardlink":
            _hardlink(item, target, out)
        else:
            _copy(item, target, data, verify=mode == "move")
    except OSError as err:
        raise CatDogError(
            f"cannot write {target} ({err.strerror or err}); check the free space and permissions of {out}"
        ) from err
    return True


def _in_place(item: Item, target: str, hardlink: bool) -> bool:
    """Whether ``target`` already holds the planned bytes (as a regular file)."""
    try:
        stat = os.lstat(target)
    except FileNotFoundError:
        return False
    if not os.path.isfile(target) or os.path.islink(target) or stat.st_size != item.size:
        return False
    if hardlink and item.file.path is not None and os.path.samefile(target, item.file.path):
        return True
    return file_sha256(target) == item.sha256


def _copy(item: Item, target: str, data: bytes | None, verify: bool) -> None:
    if data is None:
        data = item.file.read()
        if hashlib.sha256(data).hexdigest() != item.sha256:
            raise CatDogError(
                f"{item.file.ref} changed while fusing (its sha256 differs from when it was checked); "
                "nothing was deleted: run the same catdog fuse command again"
            )
    write_bytes(target, data)
    if verify and file_sha256(target) != item.sha256:
        os.unlink(target)
        raise CatDogError(f"the copy of {item.file.ref} at {target} does not match the source; no source was deleted")


def write_bytes(target: str, data: bytes) -> None:
    """Create ``target`` (it must not exist) holding ``data``."""
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)


def _hardlink(item: Item, target: str, out: str) -> None:
    assert item.file.path is not None
    try:
        os.link(item.file.path, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        raise CatDogError(
            f"cannot hardlink {item.file.path} into {out} ({err.strerror}); hardlinks need the output on "
            "the same filesystem as the source: use --mode copy or --mode symlink"
        ) from err


def _symlink(item: Item, target: str, fresh: bool) -> bool:
    assert item.file.path is not None
    link_to = os.path.realpath(item.file.path)
    if not fresh and os.path.islink(target) and os.readlink(target) == link_to:
        return False
    if not fresh and os.path.lexists(target):
        os.unlink(target)
    os.symlink(link_to, target)
    return True


def make_folders(out: Path) -> None:
    """``out/{train,test}/{cat,dog}``; an error names the folder that cannot be made."""
    for split in SPLITS:
        for label in CLASSES:
            folder = out / split / label
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise CatDogError(
                    f"--out {out}: cannot create {folder} ({err.strerror or err}); choose a writable --out"
                ) from err


def clear_out(out: Path) -> None:
    """Remove what an earlier fusion wrote (and only that) before writing anew."""
    for name in (*SPLITS, MANIFEST, SPLIT_FILE):
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def delete_moved_sources(plan: Plan) -> int:
    """``--mode move``: delete the source of every placed item; returns the count.

    Runs after every copy is verified and recorded. A source must still hold the bytes that were copied:
    if any changed since, none is deleted.
    """
    sources = [item for item in plan.placed if item.file.path is not None and os.path.exists(item.file.path)]
    for item in sources:
        if file_sha256(item.file.path) != item.sha256:  # type: ignore[arg-type]
            raise CatDogError(
                f"{item.file.path} changed after it was copied (its sha256 differs); no source was deleted. "
                "Run the same catdog fuse command again"
            )
    for item in sources:
        os.unlink(item.file.path)  # type: ignore[arg-type]
    return len(sources)
