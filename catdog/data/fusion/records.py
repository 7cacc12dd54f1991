"""What fusion decides per file (:class:`Item`, a manifest row) and the two records it writes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from catdog import CLASSES
from catdog.data.fusion.sources import SourceFile
from catdog.data.splits import MANIFEST  # noqa: F401 - re-exported by catdog.data.fusion

SPLITS = ("train", "test")
SPLIT_FILE = "split.json"
MANIFEST_COLUMNS = ("split", "label", "breed", "source", "destination", "sha256", "size", "status", "detail")
#: Statuses of files that are not in the output on purpose (everything else not "ok" is an exclusion).
NOT_EXCLUDED = frozenset({"ok", "unused", "labels"})


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

    @property
    def excluded(self) -> bool:
        """Left out because something is wrong with it (corrupt, unreadable, unexpected)."""
        return self.status not in NOT_EXCLUDED

    def row(self) -> tuple[object, ...]:
        """The manifest row, in :data:`MANIFEST_COLUMNS` order."""
        return (self.split or "excluded", self.label, self.breed, self.file.ref, self.destination, self.sha256,
                self.size, self.status, self.detail)  # fmt: skip

    def as_dict(self) -> dict[str, object]:
        return dict(zip(MANIFEST_COLUMNS, self.row(), strict=True))


def manifest_bytes(items: list[Item]) -> bytes:
    """``manifest.csv`` for ``items`` (one row each)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(item.row() for item in items)
    return buffer.getvalue().encode()


def split_document(
    arguments: dict[str, object],
    train_breeds: list[str],
    test_breeds: list[str],
    counts: dict[str, dict[str, int]],
    leaks: list[dict[str, str]],
    complete: bool,
) -> bytes:
    """``split.json``: the arguments, breeds, counts, leakage report and whether the run completed."""
    document = {
        "arguments": arguments,
        "seed": arguments["seed"],
        "classes": list(CLASSES),
        "train_breeds": train_breeds,
        "test_breeds": test_breeds,
        "counts": counts,
        "leaks": leaks,
        "complete": complete,
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def previous_run(out: Path) -> dict | None:
    """The split.json of an earlier fusion into ``out``, if any."""
    with contextlib.suppress(json.JSONDecodeError, OSError, UnicodeDecodeError):
        document = json.loads((out / SPLIT_FILE).read_text())
        return document if isinstance(document, dict) else None
    return None


def replace_if_changed(target: Path, content: bytes) -> bool:
    """Write ``content`` to ``target`` atomically unless it already holds it; True when written."""
    with contextlib.suppress(OSError):
        if target.read_bytes() == content:
            return False
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(content)
    os.replace(partial, target)
    return True
