"""Training throughput (images/s) of the four Keras baselines, TensorFlow vs torch backend, in one run.

    python benchmarks/keras_throughput.py --image-size 64 --batch-size 16 --steps 10 --rounds 5
    python benchmarks/keras_throughput.py --models custom_cnn effnetv2b2_scratch --image-size 224
    python benchmarks/keras_throughput.py --quick    # the custom CNN at 32 px, one step: checks that it runs

Keras fixes its backend at import, so each backend is one worker process, started once and kept alive.
Every model is built and compiled exactly as ``python -m keras_baselines train`` builds it (graph mode on
TensorFlow, Keras' defaults on torch) and trains on a fixed random batch: the first ``--warmup`` steps
(TensorFlow traces its graph there) are not timed. Then ``--rounds`` interleaved rounds, each timing
``--steps`` steps of every (model, backend) pair in a rotating order, so that load from other processes
hits both backends alike; each figure is the median over rounds, and the ratio is torch's median over
TensorFlow's. Both workers use ``--threads`` threads. The input pipeline is left out: this measures the
model's training step.

VGG16 at 224 px trains at about 1 image/s on 2 CPU cores: keep ``--steps`` small there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keras_baselines import BACKENDS, MODEL_NAMES, use_backend  # noqa: E402

PREFIX = "RESULT "
#: ``--quick``: the smallest model at 32 px, one timed step of one round.
QUICK = dict(models=["custom_cnn"], image_size=32, batch_size=4, steps=1, warmup=1, rounds=1, threads=1)


def _set_threads(backend: str, threads: int) -> None:
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    else:
        import torch

        torch.set_num_threads(threads)


def worker(args: argparse.Namespace) -> None:
    """Build and warm up every model, then answer ``{"model": name}`` lines on stdin with timed steps."""
    use_backend(args.backend)
    _set_threads(args.backend, args.threads)
    import keras
    import numpy as np

    from keras_baselines.models import build_model, get_spec

    size, batch = args.image_size, args.batch_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    targets = rng.integers(0, 2, batch)
    models, labels, warmup = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "effnetv2b2_notop.weights.h5"
        if "effnetv2b2_imagenet" in args.models:
            # Random no-top weights stand in for the ImageNet file: same shapes, same cost.
            base = keras.applications.EfficientNetV2B2(include_top=False, weights=None, input_shape=(size, size, 3))
            base.save_weights(weights)
        for name in args.models:
            spec = get_spec(name)
            onehot = keras.utils.to_categorical(targets, 2) if spec.label_mode == "categorical" else targets[:, None]
            labels[name] = onehot.astype("float32")
            keras.utils.set_random_seed(0)
            models[name] = build_model(name, image_size=size, weights=weights if spec.pretrained else None)
            start = time.perf_counter()
            for _ in range(args.warmup):
                models[name].train_on_batch(images, labels[name])
            warmup[name] = time.perf_counter() - start
    params = {name: int(model.count_params()) for name, model in models.items()}
    print(PREFIX + json.dumps({"ready": True, "warmup_s": warmup, "params": params}), flush=True)
    for line in sys.stdin:
        name = json.loads(line)["model"]
        start = time.perf_counter()
        for _ in range(args.steps):
            models[name].train_on_batch(images, labels[name])
        seconds = time.perf_counter() - start
        print(PREFIX + json.dumps({"model": name, "images_per_s": batch * args.steps / seconds}), flush=True)


def _read_result(proc: subprocess.Popen, backend: str) -> dict:
    for line in proc.stdout:
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX) :])
    proc.stderr.seek(0)
    log = proc.stderr.read()[-3000:]
    raise RuntimeError(f"the {backend} worker stopped (exit {proc.wait()}):\n{log}")


def _start_worker(backend: str, args: argparse.Namespace, log: object) -> subprocess.Popen:
    """One worker process; its log (TensorFlow's start-up lines included) goes to ``log``, shown on failure."""
    cmd = [sys.executable, __file__, "--worker", "--backend", backend, "--models", *args.models]
    for flag in ("image_size", "batch_size", "steps", "warmup", "threads"):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)


def measure(args: argparse.Namespace) -> tuple[dict[tuple[str, str], list[float]], dict[str, dict]]:
    """Images/s of every (model, backend) per round, and each worker's warm-up report."""
    with contextlib.ExitStack() as stack:
        logs = {backend: stack.enter_context(tempfile.TemporaryFile("w+")) for backend in args.backends}
        workers = {backend: _start_worker(backend, args, logs[backend]) for backend in args.backends}
        stack.callback(_stop, workers)
        ready = {}
        for backend, proc in workers.items():
            print(f"[{backend}] building and warming up {', '.join(args.models)} ...", file=sys.stderr, flush=True)
            ready[backend] = _read_result(proc, backend)
        samples: dict[tuple[str, str], list[float]] = {(m, b): [] for m in args.models for b in args.backends}
        pairs = list(samples)
        for round_ in range(args.rounds):
            shift = round_ % len(pairs)
            for name, backend in pairs[shift:] + pairs[:shift]:  # rotating order
                proc = workers[backend]
                proc.stdin.write(json.dumps({"model": name}) + "\n")
                proc.stdin.flush()
                samples[(name, backend)].append(_read_result(proc, backend)["images_per_s"])
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        return samples, ready


def _stop(workers: dict[str, subprocess.Popen]) -> None:
    for proc in workers.values():
        proc.stdin.close()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model, backend and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (graph tracing)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads per backend")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parse_args(parser, argv, QUICK)
    if args.worker:
        worker(args)
        return 0

    samples, ready = measure(args)
    print(
        f"\nKeras training throughput at {args.image_size} px, batch {args.batch_size}: {args.steps} timed steps "
        f"(+{args.warmup} warm-up) x {args.rounds} interleaved rounds, median; {args.threads} threads per backend"
    )
    header = f"{'model':<22}{'backend':<12}{'images/s':>10}{'min-max':>16}{'warm-up s':>11}{'params':>13}"
    print(header + f"{'vs tensorflow':>15}")
    print("-" * (len(header) + 15))
    for name in args.models:
        base = statistics.median(samples[(name, "tensorflow")]) if "tensorflow" in args.backends else None
        for backend in args.backends:
            values = samples[(name, backend)]
            rate = statistics.median(values)
            spread = f"{min(values):.1f}-{max(values):.1f}"
            ratio = f"{rate / base:.2f}x" if base else "-"
            warm = ready[backend]["warmup_s"][name]
            params = ready[backend]["params"][name]
            print(f"{name:<22}{backend:<12}{rate:>10.2f}{spread:>16}{warm:>11.1f}{params:>13,}{ratio:>15}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
