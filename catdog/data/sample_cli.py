"""``catdog sample-data``: the small generated layouts (:mod:`~catdog.data.sample_data`) or, with ``--scale
kaggle``, the real downloads' counts and photo sizes (:mod:`~catdog.data.kaggle_scale`)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from catdog import CatDogError
from catdog.data import sample_data
from catdog.data.sample_data import BREED_NAMES, CATS_DIRNAME, DOGS_DIRNAME, generate
from catdog.data.splits import DEFAULT_CAT_TEST, DEFAULT_CAT_TRAIN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catdog sample-data", description=sample_data.__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write both layouts into")
    parser.add_argument("--cats", type=int, default=200, help="cat images (default 200)")
    parser.add_argument("--dogs-per-breed", type=int, default=20, help="dog images per breed (default 20)")
    parser.add_argument("--breeds", type=int, default=10, help=f"breeds, at most {len(BREED_NAMES)} (default 10)")
    parser.add_argument("--size", type=int, default=64, help="image height in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zip", action="store_true", help="write the zips Kaggle ships instead of folders")
    parser.add_argument("--corrupt", type=int, default=0, help="truncated JPEGs to plant among cats and dogs")
    parser.add_argument("--force", action="store_true", help="replace existing sample data in --out")
    parser.add_argument("--scale", choices=("small", "kaggle"), default="small",
                        help="kaggle: the real downloads' counts, names and photo sizes (ignores --cats, --dogs-per-"
                        "breed, --breeds, --size, --corrupt)")  # fmt: skip
    parser.add_argument("--fraction", type=float, default=1.0, help="--scale kaggle: share of every count (default 1)")
    parser.add_argument("--workers", type=int, default=None, help="--scale kaggle: processes drawing (default: cores)")
    args = parser.parse_args(argv)
    for name in (CATS_DIRNAME, DOGS_DIRNAME, f"{CATS_DIRNAME}.zip", f"{DOGS_DIRNAME}.zip"):
        existing = args.out / name
        if existing.exists():
            if not args.force:
                raise CatDogError(f"{existing} already exists; pass --force to replace it")
            shutil.rmtree(existing) if existing.is_dir() else existing.unlink()
    if args.scale == "kaggle":
        from catdog.data.kaggle_scale import generate_kaggle, scaled_count  # tqdm: the data extra

        result = generate_kaggle(args.out, args.fraction, args.seed, args.zip, args.workers)
        cat_train, cat_test = (scaled_count(count, args.fraction) for count in (DEFAULT_CAT_TRAIN, DEFAULT_CAT_TEST))
        print(f"cats: {result.cats_source}\ndogs: {result.dogs_source}")
        print(f"next: catdog fuse --cats-source {result.cats_source} --dogs-source {result.dogs_source} "
              f"--out dataset --cat-train {cat_train} --cat-test {cat_test}")  # fmt: skip
        return 0
    result = generate(args.out, args.cats, args.dogs_per_breed, args.breeds, args.size, args.seed, args.zip,
                      args.corrupt)  # fmt: skip
    usable = args.cats - args.corrupt
    print(f"cats: {result.cats_source}\ndogs: {result.dogs_source}")
    print(f"next: catdog fuse --cats-source {result.cats_source} --dogs-source {result.dogs_source} "
          f"--out dataset --cat-train {int(usable * 0.72)} --cat-test {usable - int(usable * 0.72)}")  # fmt: skip
    return 0
