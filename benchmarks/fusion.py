"""Fusion speed against ``cp -r`` of the same files, measured in the same run.

    python benchmarks/fusion.py [--cats 3000] [--breeds 30] [--dogs-per-breed 60] [--size 160]

Prints seconds for ``cp -r`` of both sources and for ``catdog fuse`` in copy, hardlink and zip-source
modes (best of ``--repeat`` runs each, warm page cache), and each fuse time as a ratio to ``cp -r``.
Goal: copy mode <= 1.2x ``cp -r``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from catdog.fusion import fuse
from catdog.sample_data import generate


def best_of(repeat: int, prepare: Callable[[], None], run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        prepare()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cats", type=int, default=3000)
    parser.add_argument("--breeds", type=int, default=30)
    parser.add_argument("--dogs-per-breed", type=int, default=60)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        folders = generate(root / "src", args.cats, args.dogs_per_breed, args.breeds, args.size, seed=0)
        zips = generate(root / "zsrc", args.cats, args.dogs_per_breed, args.breeds, args.size, seed=0, as_zip=True)
        files = args.cats + args.breeds * args.dogs_per_breed
        megabytes = sum(p.stat().st_size for p in (root / "src").rglob("*") if p.is_file()) / 1e6
        print(f"generated {files} source images ({megabytes:.0f} MB) in {time.perf_counter() - start:.1f}s")
        out = root / "out"

        def clear() -> None:
            shutil.rmtree(out, ignore_errors=True)

        def copy_tree() -> None:
            out.mkdir()
            subprocess.run(["cp", "-r", str(folders.cats_source), str(folders.dogs_source), str(out)], check=True)

        n_train = int(args.cats * 0.72)
        kwargs = dict(cat_train=n_train, cat_test=args.cats - n_train, progress=False)
        variants: dict[str, tuple[Callable[[], None], Callable[[], object]]] = {
            "cp -r": (clear, copy_tree),
            "fuse copy": (clear, lambda: fuse(folders.cats_source, folders.dogs_source, out, **kwargs)),
            "fuse hardlink": (
                clear,
                lambda: fuse(folders.cats_source, folders.dogs_source, out, mode="hardlink", **kwargs),
            ),
            "fuse copy (zip sources)": (clear, lambda: fuse(zips.cats_source, zips.dogs_source, out, **kwargs)),
            "fuse rerun (no change)": (lambda: None, lambda: fuse(zips.cats_source, zips.dogs_source, out, **kwargs)),
            "fuse copy --verify full": (
                clear,
                lambda: fuse(folders.cats_source, folders.dogs_source, out, verify="full", **kwargs),
            ),
        }
        # Interleaved rounds, so that a slow moment of the machine hits every variant alike; best of each.
        results = {name: float("inf") for name in variants}
        for _ in range(args.repeat):
            for name, (prepare, run) in variants.items():
                results[name] = min(results[name], best_of(1, prepare, run))
        baseline = results["cp -r"]
        print(f"{'':26s} {'seconds':>8s} {'x cp -r':>8s} {'files/s':>9s}")
        for name, seconds in results.items():
            print(f"{name:26s} {seconds:8.3f} {seconds / baseline:8.2f} {files / seconds:9.0f}")
        ratio = results["fuse copy"] / baseline
        print(f"goal: fuse copy <= 1.2x cp -r -> {ratio:.2f}x {'(met)' if ratio <= 1.2 else '(NOT met)'}")


if __name__ == "__main__":
    main()
