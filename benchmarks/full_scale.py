"""Full-scale rehearsal: the real Kaggle downloads' size and shape, each figure beside a baseline of the same run.

    python benchmarks/full_scale.py [--root scale-data] [--fraction 1.0] [--runs all|none|NAME ...]
                                    [--gpu-rate 1200] [--quick]

1. Sources: ``catdog sample-data --scale kaggle`` into ``ROOT/sources`` (kept and reused for the same fraction).
2. Fusion: ``catdog fuse`` (copy, then hardlink) against ``cp -r`` / ``cp -rl`` of exactly the files it
   places (a prepared tree of hardlinks to them, in the same four folders): wall, CPU and peak RSS of each
   process (``wait4``); the manifest must hold every file of both sources.
3. Data path: decoded + augmented training images per second in one process (one loader worker) at 224 and
   260 px on these photos, against decoding alone, and the workers a GPU training at ``--gpu-rate`` needs.
4. ``catdog compare`` over the full fused data with a step cap (1 epoch, 2 steps, 64 px, stand-in ImageNet
   weights), one run at a time: wall and peak RSS per run (the trainer's process tree), and predictions.csv
   rows against the test split.
5. Keras at 224 px: the input pipelines over two epochs (their in-memory cache), then each model's training
   steps alone: together, a Keras trainer's peak memory.
6. An estimate on paper of the full recipe (224 px, 10 epochs, seven runs) on one GPU, assumptions printed.

``--quick`` (a test runs it): fraction 0.02, 24 images for the data path, no compare runs; seconds.
The GPU rate: timm's published training benchmark (results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv)
gives tf_efficientnetv2_b2 1,393 images/s at 208 px (AMP, batch 512, RTX 3090); scaled by pixels to
224 px that is about 1,200/s and to 260 px about 890/s. vgg16: 465/s at 224 px in the same table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from catdog.data.kaggle_scale import scaled_count
from catdog.data.splits import DEFAULT_CAT_TEST, DEFAULT_CAT_TRAIN

ROOT = Path(__file__).resolve().parents[1]
B2_RATE_208 = 1392.9  # timm benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv, tf_efficientnetv2_b2 at 208 px
VGG16_RATE_224 = 465.36  # the same table, vgg16 at 224 px
SEVEN = ("lightning-pretrained", "lightning-scratch", "poutyne-scratch", "keras-effnetv2b2_scratch",
         "keras-effnetv2b2_imagenet", "keras-custom_cnn", "keras-vgg16")  # fmt: skip


@dataclass
class Measured:
    """One process: wall seconds, CPU seconds (user + system) and peak RSS in MB (its largest process)."""

    wall: float
    cpu: float
    rss_mb: float
    status: int


def measure(command: list[str], **kwargs) -> Measured:
    """Run ``command``; its own resource usage from ``wait4`` (children it waited for included)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, **kwargs)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                    process.returncode)  # fmt: skip


def catdog(*args: str) -> list[str]:
    return [sys.executable, "-m", "catdog", *args]


def sources(root: Path, fraction: float) -> tuple[Path, Path]:
    """The generated downloads for ``fraction`` (generated once, then reused)."""
    out = root / "sources"
    marker = out / "fraction.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == {"fraction": fraction}):
        shutil.rmtree(out, ignore_errors=True)
        took = measure(catdog("sample-data", "--scale", "kaggle", "--fraction", str(fraction), "--out", str(out)),
                       stdout=subprocess.DEVNULL)  # fmt: skip
        if took.status:
            raise SystemExit("sample-data --scale kaggle failed")
        marker.write_text(json.dumps({"fraction": fraction}))
        print(f"generate: {took.wall:.1f} s wall, {took.cpu:.1f} s CPU (all workers: {_cpu_note()})")
    cats, dogs = out / "dogs-vs-cats", out / "dog-breed-identification"
    files = sum(len(names) for source in (cats, dogs) for _, _, names in os.walk(source))
    size = sum(os.path.getsize(os.path.join(d, n)) for s in (cats, dogs) for d, _, ns in os.walk(s) for n in ns)
    print(f"sources: {files:,} files, {size / 1e9:.2f} GB in {out}")
    return cats, dogs


def _cpu_note() -> str:
    return f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"


def bench_fusion(root: Path, cats: Path, dogs: Path, fraction: float, quick: bool = False) -> Path:
    """fuse copy / hardlink against cp -r / cp -rl of the same placed files; returns the fused dataset.

    The file system's state moves these figures more than either program does (dirty pages of the previous
    writes, the journal): every command starts after ``sync`` with the page cache warm, the pairs alternate,
    and each figure is the median of three runs (one with ``--quick``); "+ sync" adds the time to put the
    written files on disk.
    """
    cat_train, cat_test = (scaled_count(count, fraction) for count in (DEFAULT_CAT_TRAIN, DEFAULT_CAT_TEST))
    dataset, work = root / "dataset", root / "fuse-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fuse_args = ["--cats-source", str(cats), "--dogs-source", str(dogs), "--cat-train", str(cat_train),
                 "--cat-test", str(cat_test), "--no-progress", "--overwrite"]  # fmt: skip
    shutil.rmtree(dataset, ignore_errors=True)
    subprocess.run(catdog("fuse", *fuse_args, "--out", str(dataset)), stdout=subprocess.DEVNULL, check=True)
    prepared = _prepared_tree(dataset, work / "prepared")
    subprocess.run(["tar", "cf", "/dev/null", str(prepared), str(cats), str(dogs)], check=True)  # warm page cache
    commands = {
        "cp -r": ["cp", "-r", str(prepared), str(work / "out")],
        "fuse copy": catdog("fuse", *fuse_args, "--out", str(work / "out")),
        "cp -rl": ["cp", "-rl", str(prepared), str(work / "out")],
        "fuse hardlink": catdog("fuse", *fuse_args, "--mode", "hardlink", "--out", str(work / "out")),
    }
    runs: dict[str, list[Measured]] = {name: [] for name in commands}
    synced: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(1 if quick else 3):
        for name, command in commands.items():
            shutil.rmtree(work / "out", ignore_errors=True)
            os.sync()
            runs[name].append(measure(command, stdout=subprocess.DEVNULL))
            start = time.perf_counter()
            os.sync()
            synced[name].append(runs[name][-1].wall + time.perf_counter() - start)
    shutil.rmtree(work / "out", ignore_errors=True)
    results = {
        name: Measured(
            statistics.median(m.wall for m in ms),
            statistics.median(m.cpu for m in ms),
            max(m.rss_mb for m in ms),
            max(m.status for m in ms),
        )
        for name, ms in runs.items()
    }
    on_disk = {name: statistics.median(values) for name, values in synced.items()}
    print(f"\nfusion (one process each, median of {len(runs['cp -r'])} alternating runs after sync; {_cpu_note()})")
    header = f"  {'':14s} {'wall s':>8s} {'CPU s':>8s} {'RSS MB':>8s} {'+ sync s':>9s} {'wall range s':>13s}"
    print(f"{header}  ratio to its cp (wall, CPU, + sync)")
    for name, base in (("cp -r", None), ("fuse copy", "cp -r"), ("cp -rl", None), ("fuse hardlink", "cp -rl")):
        m = results[name]
        walls = [run.wall for run in runs[name]]
        spread = f"{min(walls):.2f}-{max(walls):.2f}"
        ratio = (f"  {m.wall / results[base].wall:5.2f}x {m.cpu / results[base].cpu:5.2f}x "
                 f"{on_disk[name] / on_disk[base]:5.2f}x" if base else "")  # fmt: skip
        print(f"  {name:14s} {m.wall:8.2f} {m.cpu:8.2f} {m.rss_mb:8.0f} {on_disk[name]:9.2f} {spread:>13s}{ratio}")
    _check_manifest(dataset, cats, dogs)
    shutil.rmtree(work)
    return dataset


def _prepared_tree(dataset: Path, prepared: Path) -> Path:
    """``prepared/{train,test}/{cat,dog}`` holding hardlinks to exactly the source files fuse placed."""
    with (dataset / "manifest.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["destination"]:
                target = prepared / row["destination"]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(row["source"], target)
    return prepared


def _check_manifest(dataset: Path, cats: Path, dogs: Path) -> None:
    with (dataset / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    files = sum(len(names) for source in (cats, dogs) for _, _, names in os.walk(source))
    split = json.loads((dataset / "split.json").read_text())
    counts = {s: split["counts"][s] for s in ("train", "test")}
    verdict = "every file" if len(rows) == files else "MISSING"
    print(f"  manifest: {len(rows):,} rows for {files:,} source files ({verdict}); "
          f"train {counts['train']}, test {counts['test']}; "
          f"breeds {len(split['train_breeds'])} train / {len(split['test_breeds'])} test")  # fmt: skip
    if len(rows) != files:
        raise SystemExit("the manifest does not list every source file")


def bench_data_path(dataset: Path, images: int, gpu_rate_224: float) -> dict[int, float]:
    """Decoded + augmented images/s in one process at 224 and 260 px; returns the rate per size."""
    import torch

    from catdog import CLASSES
    from catdog.data.datamodule import ImageDataset
    from catdog.data.transforms import PreprocessConfig, open_image, train_augmentation

    torch.set_num_threads(1)  # one loader worker is one process doing this
    paths = sorted(p for label in CLASSES for p in (dataset / "train" / label).iterdir())
    chosen = random.Random(0).sample(paths, min(images, len(paths)))
    start = time.perf_counter()
    for path in chosen:
        open_image(path).load()
    decode_rate = len(chosen) / (time.perf_counter() - start)
    print(f"\ndata path: {len(chosen)} training photos, one process ({_cpu_note()})")
    print(f"  decode only (baseline)        {decode_rate:7.1f} images/s")
    rates = {}
    for size in (224, 260):
        config = PreprocessConfig(image_size=size)
        data = ImageDataset(chosen, [0] * len(chosen), config, augment=train_augmentation(config))
        start = time.perf_counter()
        for index in range(len(data)):
            data[index]
        rates[size] = len(chosen) / (time.perf_counter() - start)
        gpu = gpu_rate_224 * (224 / size) ** 2
        print(f"  decode + augment at {size} px   {rates[size]:7.1f} images/s "
              f"({rates[size] / decode_rate:4.2f}x decode alone); "
              f"a GPU at {gpu:,.0f} images/s needs {math.ceil(gpu / rates[size])} loader workers")  # fmt: skip
    return rates


def bench_compare(root: Path, dataset: Path, runs: list[str]) -> dict[str, Measured]:
    """Each run of the comparison alone, with a step cap: wall, peak RSS, predictions rows."""
    config = _compare_config(root)
    out = root / "compare"
    test_count = sum(1 for label in ("cat", "dog") for _ in (dataset / "test" / label).iterdir())
    print(f"\ncompare: 1 epoch, 2 steps of 32 at 64 px, stand-in weights; {test_count:,} test images ({_cpu_note()})")
    print(f"  {'run':28s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS MB':>12s}  predictions.csv rows")
    results = {}
    for name in runs:
        log = (out / f"{name}.compare.log").open("w") if out.mkdir(parents=True, exist_ok=True) is None else None
        m = measure(catdog("compare", "-c", str(config), "--data", str(dataset), "--out", str(out), "--only", name,
                           "--force"), stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        predictions = out / name / "predictions.csv"
        rows = sum(1 for _ in predictions.open()) - 1 if predictions.is_file() else 0
        verdict = "= test split" if rows == test_count else f"!= {test_count} (FAILED, see {out / name})"
        print(f"  {name:28s} {m.wall:8.1f} {m.cpu:8.1f} {m.rss_mb:12.0f}  {rows:,} {verdict}", flush=True)
        results[name] = m
    total = sum(m.wall for m in results.values())
    print(f"  all {len(results)} run(s): {total / 60:.1f} min wall")
    return results


_KERAS_EPOCH = """import sys
from keras_baselines.data import load_splits
splits = load_splits(sys.argv[1], int(sys.argv[2]), 32, "categorical")
for epoch in range(2):
    seen = sum(int(images.shape[0]) for images, _ in splits.train) + sum(int(i.shape[0]) for i, _ in splits.val)
print(len(splits.train_files), len(splits.val_files), seen)
"""


def bench_keras_cache(dataset: Path, size: int = 224) -> None:
    """Peak RSS of the Keras input pipelines over two whole epochs at ``size`` px (training + validation, decoded
    once into the in-memory cache), against the cache's size on paper."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", "import keras_baselines"], env=env, capture_output=True)
    if done.returncode:
        print("\nKeras pipelines: keras_baselines not importable here, skipped")
        return
    m = measure([sys.executable, "-c", _KERAS_EPOCH, str(dataset), str(size)], env=env, stdout=subprocess.DEVNULL)
    images = sum(1 for label in ("cat", "dog") for _ in (dataset / "train" / label).iterdir())
    cache = images * size * size * 3 / 1e9
    print(f"\nKeras pipelines at {size} px, two epochs over train + validation ({images:,} images, {_cpu_note()}):")
    print(
        f"  peak RSS {m.rss_mb / 1000:.2f} GB (goal <= 8 GB); the uint8 cache on paper {cache:.2f} GB; "
        f"{m.wall:.0f} s wall, {m.cpu:.0f} s CPU{'' if m.status == 0 else ' (FAILED)'}"
    )


_KERAS_STEPS = """import sys
import numpy as np
from keras_baselines.models import build_model, get_spec
name, size, weights = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None
model = build_model(name, size, weights=weights if get_spec(name).pretrained else None, offline=True)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (96, size, size, 3)).astype("float32")
y = rng.integers(0, 2, 96)
y = np.eye(2, dtype="float32")[y] if get_spec(name).label_mode == "categorical" else y.astype("float32")[:, None]
model.fit(x, y, batch_size=32, epochs=1, verbose=0)
model.predict(x, batch_size=32, verbose=0)
"""


def bench_keras_models(root: Path, size: int = 224) -> None:
    """Peak RSS of each Keras model training three steps of batch 32 at ``size`` px (and predicting), in a process
    of its own: the model's share of a trainer's memory, beside the input pipelines' share measured above."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    baseline = measure([sys.executable, "-c", "import keras_baselines.models"], env=env)
    weights = str(root / "weights" / "effnetv2b2_notop.weights.h5")
    print(f"\nKeras models at {size} px, 3 training steps of 32 + predict, one process each ({_cpu_note()}):")
    print(f"  import only (baseline): peak RSS {baseline.rss_mb / 1000:.2f} GB")
    for name in ("effnetv2b2_scratch", "effnetv2b2_imagenet", "custom_cnn", "vgg16"):
        m = measure([sys.executable, "-c", _KERAS_STEPS, name, str(size), weights], env=env)
        verdict = "" if m.status == 0 else " (FAILED)"
        print(f"  {name:22s} peak RSS {m.rss_mb / 1000:5.2f} GB, {m.wall:6.0f} s wall, {m.cpu:6.0f} s CPU{verdict}",
              flush=True)  # fmt: skip


def _compare_config(root: Path) -> Path:
    """configs/compare.yaml with the step-capped recipe and stand-in ImageNet weights (made once)."""
    weights = root / "weights"
    torch_file, keras_file = weights / "tf_efficientnetv2_b2.pth", weights / "effnetv2b2_notop.weights.h5"
    weights.mkdir(parents=True, exist_ok=True)
    if not torch_file.is_file():
        script = ("import timm, torch, sys; torch.save(timm.create_model('tf_efficientnetv2_b2').state_dict(), "
                  "sys.argv[1])")  # fmt: skip
        subprocess.run([sys.executable, "-c", script, str(torch_file)], check=True)
    if not keras_file.is_file():
        script = ("import keras, sys; keras.applications.EfficientNetV2B2(include_top=False, weights=None, "
                  "input_shape=(64, 64, 3)).save_weights(sys.argv[1])")  # fmt: skip
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run([sys.executable, "-c", script, str(keras_file)], check=True, env=env)
    config = yaml.safe_load((ROOT / "configs" / "compare.yaml").read_text())
    config["recipe"].update(image_size=64, epochs=1, batch_size=32, steps_per_epoch=2, num_workers=2,
                            accelerator="cpu")  # fmt: skip
    config["weights"] = {"torch": str(torch_file), "keras": str(keras_file)}
    config["configs"] = {key: str(ROOT / "configs" / name) for key, name in config["configs"].items()}
    path = root / "compare.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def estimate(dataset: Path, per_worker_224: float, gpu_rate_224: float, workers: int = 2) -> None:
    """The full recipe (224 px, 10 epochs, seven runs) on one GPU, on paper, every assumption printed."""
    split = json.loads((dataset / "split.json").read_text())["counts"]
    train = sum(split["train"].values())
    test = sum(split["test"].values())
    fit, val = round(train * 0.85), round(train * 0.15)
    epochs, overhead_s, eval_speedup = 10, 60.0, 3.0
    rates = {name: gpu_rate_224 for name in SEVEN} | {"keras-vgg16": VGG16_RATE_224}
    print(f"\nestimate on paper: 224 px, {epochs} epochs, seven runs, one GPU (RTX 3090 class)")
    print(f"  assumed: training {gpu_rate_224:,.0f} images/s for EfficientNetV2-B2 (timm's table: {B2_RATE_208:,.0f}/s "
          f"at 208 px, scaled by pixels), {VGG16_RATE_224:.0f}/s for VGG16 (same table), the custom CNN no slower "
          f"than B2; Keras as fast as torch on the same GPU; evaluation {eval_speedup:.0f}x the training rate; "
          f"{overhead_s:.0f} s start-up and writing per run; loader throughput {per_worker_224:.0f} images/s per "
          f"worker as measured here")  # fmt: skip
    print(f"  per epoch: {fit:,} training + {val:,} validation images; {test:,} test images once")
    for label, loaders in ((f"recipe's {workers} workers", workers), ("enough workers", None)):
        total = 0.0
        for name in SEVEN:
            rate = rates[name] if loaders is None else min(rates[name], loaders * per_worker_224)
            seconds = overhead_s + epochs * (fit / rate + val / (rate * eval_speedup)) + test / (rate * eval_speedup)
            total += seconds
        needed = math.ceil(gpu_rate_224 / per_worker_224)
        extra = f" ({needed} workers keep the B2 runs GPU-bound)" if loaders is None else " (data-bound)"
        print(f"  with {label}: {total / 3600:.1f} h for all seven{extra}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("scale-data"), help="where data and runs go (scale-data)")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the real counts (default 1)")
    parser.add_argument("--runs", nargs="+", default=["all"], help="compare runs: all, none, or names")
    parser.add_argument("--images", type=int, default=300, help="training photos timed for the data path")
    parser.add_argument("--gpu-rate", type=float, default=B2_RATE_208 * (208 / 224) ** 2,
                        help="assumed B2 training images/s at 224 px on one GPU (default: timm's, scaled)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="fraction 0.02, 24 photos, no compare runs")
    parser.add_argument("--skip", nargs="+", default=[], choices=["data", "keras-cache", "keras-models"],
                        help="parts not measured this time (data path, Keras pipelines, Keras models)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.fraction, args.images, args.runs = 0.02, 24, ["none"]
    runs = list(SEVEN) if args.runs == ["all"] else [] if args.runs == ["none"] else args.runs
    args.root.mkdir(parents=True, exist_ok=True)
    cats, dogs = sources(args.root, args.fraction)
    dataset = bench_fusion(args.root, cats, dogs, args.fraction, args.quick)
    rates = bench_data_path(dataset, args.images, args.gpu_rate) if "data" not in args.skip else None
    if runs:
        bench_compare(args.root, dataset, runs)
    if not args.quick and "keras-cache" not in args.skip:
        bench_keras_cache(dataset)
    if not args.quick and "keras-models" not in args.skip:
        bench_keras_models(args.root)
    if rates:
        estimate(dataset, rates[224], args.gpu_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
