"""``catdog fuse``: check the output, plan, write, report; and the command line around it."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from catdog import CatDogError
from catdog.data.fusion.kaggle import read_breed_file
from catdog.data.fusion.placement import MODES, clear_out, delete_moved_sources, make_folders, write_plan
from catdog.data.fusion.plan import KEEP_BYTES, Plan, default_workers, make_plan
from catdog.data.fusion.records import (
    MANIFEST,
    SPLIT_FILE,
    SPLITS,
    manifest_bytes,
    previous_run,
    replace_if_changed,
    split_document,
)
from catdog.data.fusion.sources import Source
from catdog.data.splits import DEFAULT_CAT_TEST, DEFAULT_CAT_TRAIN

VERIFY = ("quick", "full")


@dataclass
class FusionResult:
    """What ``fuse`` did: counts per split and label, excluded files, leakage, files written."""

    out: Path
    counts: dict[str, dict[str, int]]
    train_breeds: list[str]
    test_breeds: list[str]
    excluded: list[dict[str, object]]
    leaks: list[dict[str, str]]
    unchanged: bool
    written: int = 0
    completed: bool = False  # a rerun that finished an interrupted run (or repaired its files)


def fuse(
    cats_source: str | os.PathLike[str],
    dogs_source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cat_train: int = DEFAULT_CAT_TRAIN,
    cat_test: int = DEFAULT_CAT_TEST,
    test_breed_fraction: float | None = None,
    test_breeds: list[str] | None = None,
    seed: int = 42,
    mode: str = "copy",
    overwrite: bool = False,
    verify: str = "quick",
    workers: int | None = None,
    progress: bool = True,
) -> FusionResult:
    """Fuse the two Kaggle sources into ``out`` (see :mod:`catdog.data.fusion`): plan, write, report.

    Nothing is written until the plan is complete, so a source that cannot make the dataset leaves
    ``out`` as it was.
    """
    arguments = fusion_arguments(cats_source, dogs_source, cat_train, cat_test, test_breed_fraction, test_breeds,
                                 seed, mode, verify)  # fmt: skip
    out = Path(out)
    check_out_location(out, Path(cats_source), Path(dogs_source))
    previous = previous_run(out)
    if mode == "move" and previous and previous.get("arguments") == arguments and previous.get("complete"):
        # The sources were moved by the same fusion: nothing left to do.
        return FusionResult(out, previous["counts"], previous["train_breeds"], previous["test_breeds"], [],
                            previous["leaks"], unchanged=True)  # fmt: skip
    rerun = check_out_contents(out, arguments, overwrite)
    workers = workers or default_workers()
    with Source(cats_source, "cats") as cats_src, Source(dogs_source, "dogs") as dogs_src:
        check_mode_fits(mode, cats_src, dogs_src)
        keep = KEEP_BYTES if mode in {"copy", "move"} else 0
        plan = make_plan(cats_src, dogs_src, arguments, workers, progress, keep_bytes=keep)  # nothing written yet
        written, records_changed = write(plan, out, mode, rerun, progress)
    if mode == "move":
        delete_moved_sources(plan)
    return report(plan, out, rerun, written, records_changed)


def check_mode_fits(mode: str, *sources: Source) -> None:
    """Links and moves need real files: refuse zip sources for them."""
    for source in sources:
        if mode != "copy" and not source.location.is_dir():
            raise CatDogError(
                f"--mode {mode} needs folder sources, but {source.location} is a zip; unpack it or use --mode copy"
            )


def write(plan: Plan, out: Path, mode: str, rerun: bool, progress: bool) -> tuple[int, bool]:
    """Write the plan's files and records into ``out``: (files written, whether the records changed).

    A fresh output is cleared of an earlier fusion's files (``--overwrite``) and marked incomplete first,
    so that an interrupted run is completed by the same command.
    """
    if not rerun:
        clear_out(out)
        make_folders(out)
        write_records(plan, out, complete=False)
    written = write_plan(plan, out, mode, fresh=not rerun, progress=progress)
    return written, write_records(plan, out, complete=True)


def report(plan: Plan, out: Path, rerun: bool, written: int, records_changed: bool) -> FusionResult:
    """What the fusion did, from its plan."""
    changed = written > 0 or records_changed
    excluded = [item.as_dict() for item in plan.excluded]
    return FusionResult(out, plan.counts(), plan.train_breeds, plan.test_breeds, excluded, plan.leaks,
                        unchanged=rerun and not changed, written=written, completed=rerun and changed)  # fmt: skip


def fusion_arguments(
    cats_source: str | os.PathLike[str],
    dogs_source: str | os.PathLike[str],
    cat_train: int,
    cat_test: int,
    test_breed_fraction: float | None,
    test_breeds: list[str] | None,
    seed: int,
    mode: str,
    verify: str,
) -> dict[str, object]:
    """The checked arguments as split.json records them (a rerun with the same ones changes nothing)."""
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
    return {
        "cats_source": str(Path(cats_source).resolve()),
        "dogs_source": str(Path(dogs_source).resolve()),
        "cat_train": cat_train,
        "cat_test": cat_test,
        "test_breed_fraction": test_breed_fraction,
        "test_breeds": sorted(test_breeds) if test_breeds else None,
        "seed": seed,
        "mode": mode,
        "verify": verify,
    }


def check_out_location(out: Path, *sources: Path) -> None:
    """Refuse an ``out`` inside (or holding) a source, or one that cannot be created; writes nothing."""
    resolved = out.resolve()
    for source in sources:
        where = source.resolve()
        if resolved == where or where in resolved.parents:
            raise CatDogError(
                f"--out {out} is inside the source {source}: a rerun would read its own output as source "
                "files. Choose an --out outside both sources"
            )
        if resolved in where.parents:
            raise CatDogError(f"--out {out} holds the source {source}; choose an --out outside both sources")
    existing = resolved
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CatDogError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK) or os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise CatDogError(f"--out {out}: {existing} is not writable; choose a writable --out")


def check_out_contents(out: Path, arguments: dict[str, object], overwrite: bool) -> bool:
    """Refuse an output folder we must not touch; True when it holds a run with the same arguments."""
    previous = previous_run(out)
    if previous is not None and previous.get("arguments") == arguments:
        return True
    if out.is_dir() and any(out.iterdir()):
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


def write_records(plan: Plan, out: Path, complete: bool) -> bool:
    """Write manifest.csv and split.json (unless they already hold the same); True when either changed."""
    try:
        manifest = replace_if_changed(out / MANIFEST, manifest_bytes(plan.items))
        document = split_document(plan.arguments, plan.train_breeds, plan.test_breeds, plan.counts(), plan.leaks,
                                  complete)  # fmt: skip
        return replace_if_changed(out / SPLIT_FILE, document) or manifest
    except OSError as err:
        raise CatDogError(f"--out {out}: cannot write {MANIFEST}/{SPLIT_FILE} ({err.strerror or err})") from err


def main(argv: list[str] | None = None) -> int:
    """``catdog fuse``: parse the arguments, fuse, print what was done."""
    args = _parser().parse_args(argv)
    result = fuse(
        args.cats_source, args.dogs_source, args.out, cat_train=args.cat_train, cat_test=args.cat_test,
        test_breed_fraction=args.test_breed_fraction,
        test_breeds=read_breed_file(args.test_breeds) if args.test_breeds else None,
        seed=args.seed, mode=args.mode, overwrite=args.overwrite, verify=args.verify, workers=args.workers,
        progress=not args.no_progress,
    )  # fmt: skip
    print(summary(result))
    return 0


def summary(result: FusionResult) -> str:
    """What ``catdog fuse`` prints: what was written, counts, breeds, exclusions, leakage."""
    c = result.counts
    if result.unchanged:
        lines = [f"unchanged (same arguments): {result.out}"]
    elif result.completed and result.written:
        lines = [f"completed an earlier run: {result.out} ({result.written} file(s) written)"]
    elif result.completed:
        lines = [f"updated {MANIFEST} and {SPLIT_FILE}: {result.out} (every image already in place, 0 written)"]
    else:
        lines = [f"fused: {result.out} ({result.written} file(s) written)"]
    lines += [f"  {split:5s}  cat {c[split]['cat']:6d}  dog {c[split]['dog']:6d}" for split in SPLITS]
    lines.append(f"  breeds: {len(result.train_breeds)} train, {len(result.test_breeds)} test (disjoint)")
    if result.excluded:
        lines.append(f"  excluded {len(result.excluded)} file(s), listed in {result.out / MANIFEST}:")
        lines += [f"    {row['source']}: {row['status']} ({row['detail']})" for row in result.excluded[:10]]
    if result.leaks:
        lines.append(f"  WARNING: {len(result.leaks)} byte-identical image(s) in both train and test (leakage):")
        lines += [f"    {leak['files']}" for leak in result.leaks[:10]]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--cat-train", type=int, default=DEFAULT_CAT_TRAIN, help="cats for train (default %(default)s)")
    parser.add_argument("--cat-test", type=int, default=DEFAULT_CAT_TEST, help="cats for test (default %(default)s)")
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
    parser.add_argument("--workers", type=int, default=None,
                        help=f"threads reading and checking (default {default_workers()}); one writes")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser
