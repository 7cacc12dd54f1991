"""int8 vs fp32 ONNX in one run: in-process onnxruntime throughput at 224 px, test accuracy and agreement.

    python benchmarks/quantize.py                                              # generated data, untrained b2
    python benchmarks/quantize.py --onnx models/pretrained.onnx --data-dir dataset   # a trained export
    python benchmarks/quantize.py --variants                                   # also per-tensor, QOperator, s8s8
    python benchmarks/quantize.py --quick                    # a tiny model at 32 px: checks that it runs

Without ``--onnx`` the benchmark generates a small dataset (``catdog sample-data`` + ``catdog fuse``) and
exports ``tf_efficientnetv2_b2`` at ``--image-size`` with random weights made to look trained (non-trivial
batch-norm statistics, non-zero head): the throughput and the fp32/int8 agreement mean something, the
accuracies of an untrained network do not. Give a trained export for accuracy figures.

Each int8 model comes from :func:`catdog.export.quantize.quantize_onnx` (what ``catdog export --quantize int8``
runs), which evaluates it and its fp32 source on the test split from saved predictions. Throughput:
every model gets the same batches of real test images (preprocessed once), the same onnxruntime thread
count (``--threads``) and ``--warmup`` untimed runs; the models alternate over ``--rounds`` rounds and each
figure is the median, so that load from other processes hits every model alike. Ratios are against fp32.

Goal: int8 >= 1.8x the fp32 images/s at 224 px with at most 0.5 point of test accuracy lost.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import parse_args

from catdog.data.splits import labelled_images
from catdog.data.transforms import PreprocessConfig, preprocess
from catdog.export.quantize import QuantizeResult, QuantizeSettings, quantize_onnx
from catdog.export.runtime import create_session

GOAL_SPEEDUP = 1.8
GOAL_MAX_LOSS_POINTS = 0.5
#: ``--quick``: a tiny timm test model at 32 px, few images, one short round.
QUICK = dict(model_name="test_efficientnet", image_size=32, calibration_images=8, batch_sizes=[1, 4], steps=1,
             warmup=1, rounds=1, threads=1)  # fmt: skip


def variants(calibration_images: int, all_variants: bool) -> dict[str, QuantizeSettings]:
    """The int8 settings to compare; the first is ``catdog export --quantize int8``'s default."""
    base = QuantizeSettings(calibration_images=calibration_images)
    chosen = {"int8 (QDQ, u8 act., s8 per-channel weights)": base}
    if all_variants:
        chosen["int8 per-tensor weights"] = QuantizeSettings(calibration_images=calibration_images, per_channel=False)
        chosen["int8 QOperator format"] = QuantizeSettings(
            calibration_images=calibration_images, quant_format="QOperator"
        )
        chosen["int8 s8 activations"] = QuantizeSettings(calibration_images=calibration_images, activation_type="QInt8")
    return chosen


def generated_setup(workdir: Path, image_size: int, model_name: str) -> tuple[Path, Path]:
    """A small generated dataset and an as-if-trained export of ``model_name``: (fp32 file, data dir)."""
    import torch

    from catdog.data.fusion import fuse
    from catdog.data.sample_data import generate
    from catdog.export.onnx import as_if_trained, export_onnx
    from catdog.training.network import build_network, preprocess_config_for

    sources = generate(workdir / "kaggle", cats=96, dogs_per_breed=12, breeds=8, size=image_size + 32, seed=0)
    data_dir = workdir / "dataset"
    fuse(sources.cats_source, sources.dogs_source, data_dir, cat_train=64, cat_test=32, seed=42, progress=False)
    torch.manual_seed(0)
    network = as_if_trained(build_network(model_name, exportable=True).eval(), head_std=0.05)
    config = preprocess_config_for(network, image_size)
    return export_onnx(network, config, workdir / "model.onnx", model_name).path, data_dir


def throughput(
    models: dict[str, Path], batch: np.ndarray, threads: int, steps: int, warmup: int, rounds: int
) -> dict[str, float]:
    """Median images/s of each model on ``batch`` over interleaved rounds of ``steps`` runs."""
    sessions = {name: create_session(os.fspath(path), threads=threads) for name, path in models.items()}
    inputs = {name: {session.get_inputs()[0].name: batch} for name, session in sessions.items()}
    for name, session in sessions.items():
        for _ in range(warmup):
            session.run(None, inputs[name])
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            for _ in range(steps):
                session.run(None, inputs[name])
            rates[name].append(steps * len(batch) / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def cpu_summary() -> str:
    """The CPU model and its int8 dot-product instruction sets, as /proc/cpuinfo lists them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    int8 = [flag for flag in ("avx512_vnni", "avx_vnni", "amx_int8", "avx2") if flag in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, int8-relevant flags: {', '.join(int8) or 'none'}"


def report(
    results: dict[str, QuantizeResult], rates: dict[str, dict[str, float]], generated: bool, threads: int
) -> None:
    import onnxruntime

    first = next(iter(results.values()))
    print(f"\nCPU: {cpu_summary()}; onnxruntime {onnxruntime.__version__}, {threads} intra-op threads")
    batch_sizes = list(rates)
    print(f"{'model':<46}" + "".join(f"{f'img/s b={b}':>14}{'ratio':>8}" for b in batch_sizes), end="")
    print(f"{'accuracy':>10}{'change':>9}{'agreement':>11}")
    rows = [("fp32", first.fp32_accuracy, None, None)]
    rows += [(name, r.int8_accuracy, r.accuracy_change_points, r.agreement) for name, r in results.items()]
    for name, accuracy, change, agreement in rows:
        line = f"{name:<46}"
        for b in batch_sizes:
            line += f"{rates[b][name]:>14.1f}{rates[b][name] / rates[b]['fp32']:>7.2f}x"
        line += f"{accuracy:>10.4f}" + (f"{change:>+8.2f}p{agreement:>11.4f}" if change is not None else "")
        print(line)
    name, default = next(iter(results.items()))
    speedup = min(rates[b][name] / rates[b]["fp32"] for b in batch_sizes)
    print(f"\naccuracy and agreement on {first.n_test} test images, computed from the saved predictions")
    met = "met" if speedup >= GOAL_SPEEDUP else "NOT met"
    print(f"goal int8 >= {GOAL_SPEEDUP}x fp32 images/s: {speedup:.2f}x (the lower of the batch sizes) -> {met}")
    change = default.accuracy_change_points
    met = "met" if change >= -GOAL_MAX_LOSS_POINTS else "NOT met"
    print(f"goal accuracy change >= -{GOAL_MAX_LOSS_POINTS} points: {change:+.2f} points -> {met}")
    if generated:
        print("(an untrained network on generated data: read the agreement, not the accuracies; use --onnx)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, help="an fp32 file from `catdog export` (default: generate one)")
    parser.add_argument("--data-dir", type=Path, help="its dataset (train/ calibrates, test/ evaluates)")
    parser.add_argument("--model-name", default="tf_efficientnetv2_b2", help="timm model of the generated export")
    parser.add_argument("--image-size", type=int, default=224, help="image size of the generated export (224)")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--variants", action="store_true", help="also per-tensor, QOperator and s8 activations")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads")
    parser.add_argument("--steps", type=int, default=3, help="timed runs per model and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, help="keep the generated files and predictions here (default: temp)")
    args = parse_args(parser, argv, QUICK)
    if (args.onnx is None) != (args.data_dir is None):
        parser.error("give both --onnx and --data-dir, or neither (generated data and model)")

    with tempfile.TemporaryDirectory(prefix="catdog-quantize-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.onnx is None:
            fp32, data_dir = generated_setup(workdir, args.image_size, args.model_name)
        else:
            fp32, data_dir = args.onnx, args.data_dir
        results: dict[str, QuantizeResult] = {}
        for index, (name, settings) in enumerate(variants(args.calibration_images, args.variants).items()):
            start = time.perf_counter()
            results[name] = quantize_onnx(fp32, data_dir, workdir / f"int8-{index}.onnx", settings)
            print(f"{name}: quantized and evaluated in {time.perf_counter() - start:.0f} s")
        session = create_session(os.fspath(fp32), threads=1)
        config = PreprocessConfig.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
        test_files, _ = labelled_images(data_dir / "test")
        images = np.stack([preprocess(path, config) for path in test_files[: max(args.batch_sizes)]])
        models = {"fp32": fp32, **{name: result.path for name, result in results.items()}}
        rates = {
            b: throughput(
                models, np.resize(images, (b, *images.shape[1:])), args.threads, args.steps, args.warmup, args.rounds
            )  # fmt: skip
            for b in args.batch_sizes
        }
        report(results, rates, generated=args.onnx is None, threads=args.threads)
        if args.workdir is not None:
            print(f"the fp32 and int8 predictions are in {args.workdir}/int8-*-eval/")


if __name__ == "__main__":
    main()
