"""The plan: every source file checked and given its place (or its reason to stay out), before anything is written.

Cats are shuffled with the seed and the first ``cat_train`` usable ones go to train, the next
``cat_test`` to test. Dog breeds are shuffled with the seed and split into train and test breeds;
every usable image of a breed goes to its breed's side, so no breed is on both sides.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from catdog import CLASSES, CatDogError
from catdog.data.fusion.kaggle import COMPETITION_DOGS, list_cats, list_dogs, split_breeds
from catdog.data.fusion.records import SPLITS, Item
from catdog.data.fusion.sources import Source, basename, check_image

_CHUNK = 512  # cats checked per round: enough to keep the threads busy, few read beyond the last one needed
_BATCH = 32  # files per thread task: one task per file costs more than checking a small image
#: Bytes of checked files a plan keeps for copy and move: each file is then read and hashed once, and the
#: bytes written are exactly the bytes checked. The real Kaggle data (about 0.6 GB placed) fits.
KEEP_BYTES = 1 << 30
#: Status of a file that is not a usable image, by the first word of :func:`check_image`'s reason.
_STATUS = {"not": "not_image", "unsupported": "unsupported"}


@dataclass
class Plan:
    """What a fusion will write: a plain value to inspect before anything is written.

    ``items`` holds one :class:`Item` per source file (the manifest rows, in manifest order); those with a
    ``split`` are placed at ``destination`` (relative to the output folder).
    """

    arguments: dict[str, object]
    items: list[Item]
    train_breeds: list[str]
    test_breeds: list[str]
    leaks: list[dict[str, str]]
    #: The bytes of placed files as they were checked, by ``file.ref`` (those within :data:`KEEP_BYTES`).
    contents: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def placed(self) -> list[Item]:
        """The items to write, in manifest order."""
        return [item for item in self.items if item.split in SPLITS]

    @property
    def excluded(self) -> list[Item]:
        """The items left out because something is wrong with them."""
        return [item for item in self.items if item.excluded]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and label, exclusions, unused cats and competition dogs (split.json's counts)."""
        counts = {split: dict.fromkeys(CLASSES, 0) for split in (*SPLITS, "excluded")}
        unused = {"cat": 0, "dog": 0}
        competition_dogs = 0
        for item in self.items:
            if item.split in SPLITS:
                counts[item.split][item.label] += 1
            elif item.excluded and item.label in CLASSES:
                counts["excluded"][item.label] += 1
            elif item.status == "unused" and item.label == "cat":
                unused["cat"] += 1
            elif item.detail == COMPETITION_DOGS:
                competition_dogs += 1
        return {**counts, "unused": unused, "competition_dogs_ignored": {"dog": competition_dogs}}


def make_plan(
    cats_source: Source,
    dogs_source: Source,
    arguments: dict[str, object],
    workers: int,
    progress: bool = True,
    keep_bytes: int = 0,
) -> Plan:
    """Read and check the source files and decide where each goes; writes nothing.

    ``arguments`` holds ``cat_train``, ``cat_test``, ``seed``, ``verify`` and the breed choice
    (``test_breed_fraction`` or ``test_breeds``). Up to ``keep_bytes`` of the placed files' contents stay
    in the plan for writing. Raises :class:`CatDogError` when the sources cannot make the asked-for dataset
    (too few usable cats names the corrupt ones).
    """
    cats, cat_others = list_cats(cats_source.files(), cats_source.location)
    dogs, dog_others = list_dogs(dogs_source.files(), dogs_source.location)
    wanted = {"train": int(arguments["cat_train"]), "test": int(arguments["cat_test"])}  # type: ignore[call-overload]
    if sum(wanted.values()) > len(cats):
        raise CatDogError(
            f"asked for {wanted['train']} train + {wanted['test']} test = {sum(wanted.values())} cats, but "
            f"{cats_source.location} holds only {len(cats)}; lower --cat-train/--cat-test"
        )
    seed = int(arguments["seed"])  # type: ignore[call-overload]
    train_breeds, test_breeds = split_breeds(
        [d.breed for d in dogs],
        seed,
        arguments["test_breed_fraction"],
        arguments["test_breeds"],  # type: ignore[arg-type]
    )
    side_of_breed = {breed: "train" for breed in train_breeds} | {breed: "test" for breed in test_breeds}
    random.Random(seed).shuffle(cats)
    full = arguments["verify"] == "full"
    keeper = _Keeper(keep_bytes)
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(cats) + len(dogs), desc="fuse: check", unit="img", disable=not progress) as bar,
    ):
        _choose_cats(cats, wanted, full, pool, bar, keeper)
        for item, data in _inspected(dogs, full, pool, bar):
            if item.status == "ok":
                item.split = side_of_breed[item.breed]
                keeper.keep(item, data)
    taken = {split: sum(1 for c in cats if c.split == split) for split in SPLITS}
    if taken != wanted:
        raise CatDogError(_too_few_cats(cats, taken, wanted, cats_source))
    items = [*cats, *cat_others, *dogs, *dog_others]
    _set_destinations(items)
    return Plan(arguments, items, train_breeds, test_breeds, find_leaks(items), keeper.contents)


def default_workers() -> int:
    """Threads reading and checking files (reads, hashing and decoding release the GIL)."""
    return min(8, 2 * (os.cpu_count() or 1))


class _Keeper:
    """Keeps the bytes of placed files up to a total size."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.contents: dict[str, bytes] = {}

    def keep(self, item: Item, data: bytes) -> None:
        if len(data) <= self.left:
            self.contents[item.file.ref] = data
            self.left -= len(data)


def _choose_cats(
    cats: list[Item], wanted: dict[str, int], full: bool, pool: ThreadPoolExecutor, bar: tqdm, keeper: _Keeper
) -> None:
    """Check cats in their shuffled order and fill train, then test, with usable ones; the rest are unused."""
    needed = deque(split for split in SPLITS for _ in range(wanted[split]))
    for start in range(0, len(cats), _CHUNK):
        chunk = cats[start : start + _CHUNK]
        if not needed:
            for item in chunk:
                item.status, item.detail = "unused", "beyond --cat-train + --cat-test"
            bar.update(len(chunk))
            continue
        for item, data in _inspected(chunk, full, pool, bar):
            if item.status == "ok":
                if needed:
                    item.split = needed.popleft()
                    keeper.keep(item, data)
                else:
                    item.status, item.detail = "unused", "beyond --cat-train + --cat-test"


def _inspected(items: list[Item], full: bool, pool: ThreadPoolExecutor, bar: tqdm) -> Iterator[tuple[Item, bytes]]:
    """``items`` in order with their bytes, each read, hashed and checked (in batches on the threads)."""
    batches = [items[start : start + _BATCH] for start in range(0, len(items), _BATCH)]
    for batch in pool.map(lambda batch: [inspect(item, full) for item in batch], batches):
        bar.update(len(batch))
        yield from batch


def inspect(item: Item, full: bool = False) -> tuple[Item, bytes]:
    """Read ``item``'s file: set its size and sha256, and its status when it is not a usable image."""
    try:
        data = item.file.read()
    except OSError as err:
        item.status, item.detail = "unreadable", str(err)
        return item, b""
    item.size, item.sha256 = len(data), hashlib.sha256(data).hexdigest()
    problem = check_image(data, full)
    if problem:
        item.status = _STATUS.get(problem.split(" ", 1)[0], "corrupt")
        item.detail = problem
    return item, data


def _too_few_cats(cats: list[Item], taken: dict[str, int], wanted: dict[str, int], source: Source) -> str:
    bad = [c for c in cats if c.excluded]
    shown = "; ".join(f"{c.file.ref} ({c.detail})" for c in bad[:10]) + ("; ..." if len(bad) > 10 else "")
    usable = sum(taken.values())
    return (
        f"only {usable} usable cats in {source.location} for {wanted['train']} train + {wanted['test']} test: "
        f"{len(bad)} corrupt or unreadable: {shown}. Nothing was written; lower --cat-train/--cat-test to "
        f"{usable} in all, or replace the damaged files"
    )


def _set_destinations(items: list[Item]) -> None:
    """``<split>/<label>/<file name>`` for every placed item; two files may not share one."""
    seen: dict[str, Item] = {}
    for item in items:
        if item.split not in SPLITS:
            continue
        item.destination = f"{item.split}/{item.label}/{basename(item.file.name)}"
        other = seen.setdefault(item.destination, item)
        if other is not item:
            raise CatDogError(
                f"{other.file.ref} and {item.file.ref} would both become {item.destination}; a source holds "
                "the same images twice (e.g. train.zip beside the unpacked train/): point it at one of them"
            )


def find_leaks(items: list[Item]) -> list[dict[str, str]]:
    """Byte-identical images placed in both train and test (in order of first appearance)."""
    split_of: dict[str, str] = {}
    mixed: dict[str, None] = {}
    for item in items:
        if item.split in SPLITS and split_of.setdefault(item.sha256, item.split) != item.split:
            mixed[item.sha256] = None
    if not mixed:
        return []
    by_hash: dict[str, list[str]] = defaultdict(list)
    for item in items:
        if item.split in SPLITS and item.sha256 in mixed:
            by_hash[item.sha256].append(item.destination)
    order = [digest for digest in split_of if digest in mixed]
    return [{"sha256": digest, "files": " | ".join(sorted(by_hash[digest]))} for digest in order]
