"""Training throughput (images/s) of the four Keras baselines, TensorFlow vs torch backend.

Each backend runs in its own process (Keras fixes its backend at import). Every model is built and
compiled exactly as ``python -m keras_baselines train`` does (graph mode on TensorFlow, eager on torch,
Keras' defaults), then trains on a fixed random batch: the first ``--warmup`` batches (TensorFlow traces
its graph there) are reported apart, and the next ``--batches`` are timed. The input pipeline is left
out: this measures the model's training step.

    python benchmarks/keras_throughput.py                      # 224 px, batch 8, 2 timed batches
    python benchmarks/keras_throughput.py --models custom_cnn --batches 5

VGG16 at 224 px trains at under 1 image/s on 2 CPU cores: keep ``--batches`` small there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keras_baselines import BACKENDS, MODEL_NAMES, use_backend  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """Measure every model on this process's backend; print one JSON line per model."""
    use_backend(args.backend)
    import keras
    import numpy as np

    from keras_baselines.models import build_model, get_spec

    size, batch = args.image_size, args.batch_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    targets = rng.integers(0, 2, batch)
    with tempfile.TemporaryDirectory() as tmp:
        weights = None
        if "effnetv2b2_imagenet" in args.models:
            # Random no-top weights stand in for the ImageNet file: same shapes, same cost.
            weights = Path(tmp) / "effnetv2b2_notop.weights.h5"
            keras.applications.EfficientNetV2B2(
                include_top=False, weights=None, input_shape=(size, size, 3)
            ).save_weights(weights)
        for name in args.models:
            spec = get_spec(name)
            labels = keras.utils.to_categorical(targets, 2) if spec.label_mode == "categorical" else targets[:, None]
            labels = labels.astype("float32")
            keras.utils.set_random_seed(0)
            model = build_model(name, image_size=size, weights=weights if spec.pretrained else None)
            start = time.perf_counter()
            for _ in range(args.warmup):
                model.train_on_batch(images, labels)
            warmup = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(args.batches):
                model.train_on_batch(images, labels)
            timed = time.perf_counter() - start
            record = {
                "model": name,
                "backend": keras.backend.backend(),
                "images_per_s": batch * args.batches / timed,
                "s_per_batch": timed / args.batches,
                "warmup_s": warmup,
                "params": int(model.count_params()),
            }
            print("RESULT " + json.dumps(record), flush=True)
            del model
            keras.backend.clear_session()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=2, help="timed batches per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first (graph tracing)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    results: dict[tuple[str, str], dict] = {}
    for backend in args.backends:
        cmd = [sys.executable, __file__, "--worker", "--backend", backend, "--models", *args.models]
        cmd += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
        cmd += ["--batches", str(args.batches), "--warmup", str(args.warmup)]
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        print(f"[{backend}] measuring {', '.join(args.models)} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                record = json.loads(line[len("RESULT ") :])
                results[(record["model"], backend)] = record
        if proc.returncode != 0:
            print(f"[{backend}] failed:\n{proc.stderr[-3000:]}", file=sys.stderr)

    print(
        f"\nKeras training throughput at {args.image_size} px, batch {args.batch_size}, "
        f"{args.batches} timed batch(es) after {args.warmup} warm-up, {os.cpu_count()} CPU(s)"
    )
    header = f"{'model':<22}{'backend':<12}{'images/s':>10}{'s/batch':>10}{'warm-up s':>11}{'params':>13}"
    print(header + f"{'vs tensorflow':>15}")
    print("-" * (len(header) + 15))
    for name in args.models:
        baseline = results.get((name, "tensorflow"))
        for backend in args.backends:
            r = results.get((name, backend))
            if r is None:
                print(f"{name:<22}{backend:<12}{'failed':>10}")
                continue
            ratio = f"{r['images_per_s'] / baseline['images_per_s']:.2f}x" if baseline else "-"
            print(
                f"{name:<22}{backend:<12}{r['images_per_s']:>10.2f}{r['s_per_batch']:>10.2f}"
                f"{r['warmup_s']:>11.1f}{r['params']:>13,}{ratio:>15}"
            )
    return 0 if len(results) == len(args.models) * len(args.backends) else 1


if __name__ == "__main__":
    raise SystemExit(main())
