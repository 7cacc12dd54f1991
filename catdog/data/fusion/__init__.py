"""``catdog fuse``: cats from Kaggle "Dogs vs. Cats" + breed-split dogs from "Dog Breed Identification".

Output::

    OUT/train/{cat,dog}/*.jpg  OUT/test/{cat,dog}/*.jpg
    OUT/manifest.csv   one row per file of either source: split, label, breed, source, destination,
                       sha256, size, status, detail (status "ok", or why the file is not in the output)
    OUT/split.json     the arguments, seed, train/test breeds, counts, leakage report, completion flag

A fusion is a plan, then writes, then a report: :func:`~catdog.data.fusion.plan.make_plan` reads and checks
every file it needs and decides where each goes (nothing written yet, so a source that cannot make the
dataset leaves the output as it was); :func:`~catdog.data.fusion.placement.write_plan` puts the files in
place, checking each against the sha256 of the plan; the manifest and split.json record it.

Sources may be folders or the zips Kaggle ships (read in place, nested ``train.zip`` included).
Nothing is lost: files are copied by default, ``move`` deletes a source only after every copy is
verified, a rerun with the same arguments changes nothing (and completes an interrupted run), and a
rerun with other arguments refuses unless ``--overwrite``.

Modules: ``sources`` (folders, zips, image checks), ``kaggle`` (the two layouts, the breed split),
``records`` (manifest rows, split.json), ``plan``, ``placement`` (copy/link/move), ``command``
(:func:`fuse` and ``catdog fuse``). May import :mod:`catdog.data.splits` and :mod:`catdog.utils`; no torch.
"""

from catdog.data.fusion.command import VERIFY, FusionResult, fuse, fusion_arguments, main
from catdog.data.fusion.kaggle import list_cats, list_dogs, read_labels, split_breeds
from catdog.data.fusion.placement import MODES
from catdog.data.fusion.plan import Plan, make_plan
from catdog.data.fusion.records import MANIFEST, MANIFEST_COLUMNS, SPLIT_FILE, SPLITS, Item
from catdog.data.fusion.sources import Source, SourceFile, check_image

__all__ = [
    "MANIFEST", "MANIFEST_COLUMNS", "MODES", "SPLITS", "SPLIT_FILE", "VERIFY", "FusionResult", "Item", "Plan",
    "Source", "SourceFile", "check_image", "fuse", "fusion_arguments", "list_cats", "list_dogs", "main",
    "make_plan", "read_labels", "split_breeds",
]  # fmt: skip
