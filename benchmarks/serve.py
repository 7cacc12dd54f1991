"""Serving benchmark: torch eager vs onnxruntime, and in-process vs served throughput and latency.

    python benchmarks/serve.py                      # tf_efficientnetv2_b2 at 224 px, random weights
    python benchmarks/serve.py --image-size 160 --requests 160
    python benchmarks/serve.py --ckpt runs/pretrained/checkpoints/best.ckpt

In one run:

(a) images/s of the network in torch eager mode and of its ONNX export in onnxruntime, batch 1 and 16
    (same random input, same process, each with its library's default threads);
(b) "in-process": JPEG bytes -> ``catdog.transforms.preprocess`` -> onnxruntime -> softmax, one image at a
    time in a plain loop (per-image time and images/s), against ``catdog serve`` on 127.0.0.1 with 1, 8 and
    16 concurrent clients posting the same JPEGs, batching off (``--max-batch-size 1``) and on, with
    throughput and p50/p99 latency as the clients see it.

The clients run on the same machine as the server, so on a small machine they take CPU from it: the
ratios printed at the end are the figures that count, always measured in the same run. Goals:
served >= 0.9x in-process at 8 clients; single-client p50 within 10 ms of the in-process per-image
time; onnxruntime >= 1.3x torch eager at batch 1.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

from catdog.sample_data import breed_style, draw_cat, draw_dog
from catdog.transforms import preprocess


def _rate(run: Callable[[], None], images_per_call: int, min_seconds: float, min_calls: int = 5) -> float:
    """images/s of ``run`` after one warm-up call, over at least ``min_seconds`` and ``min_calls`` calls."""
    run()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        run()
        calls += 1
    return calls * images_per_call / (time.perf_counter() - start)


def _jpegs(count: int, size: int) -> list[bytes]:
    """Sample cat/dog drawings as JPEGs about the size of the Kaggle photos."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        image = draw_cat(rng, size) if i % 2 else draw_dog(rng, size, breed_style(i % 5, 0))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(onnx_path: Path, max_batch_size: int, batch_timeout: float, extra: list[str]) -> tuple:
    port = _free_port()
    cmd = [sys.executable, "-m", "catdog", "serve", "--model", f"bench={onnx_path}", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--max-batch-size", str(max_batch_size), "--batch-timeout", str(batch_timeout)]
    cmd += ["--log-level", "warning", *extra]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server process
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"catdog serve exited:\n{log.read().decode(errors='replace')[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    process.terminate()
    raise SystemExit("catdog serve did not become healthy in 180 s")


def _load(url: str, jpegs: list[bytes], clients: int, total: int) -> dict[str, float]:
    """``clients`` threads post ``total`` JPEGs in all; throughput and client-side latency percentiles."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        with requests.Session() as session:
            session.post(url, data=jpegs[0], headers={"Content-Type": "image/jpeg"})  # warm the connection
            barrier.wait()
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                response = session.post(url, data=jpegs[i % len(jpegs)], headers={"Content-Type": "image/jpeg"})
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if response.status_code != 200:
                        errors.append(response.text[:200])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    ms = np.array(latencies) * 1000
    return {"rps": total / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnetv2_b2", help="timm model (random weights)")
    parser.add_argument("--ckpt", help="a catdog checkpoint to benchmark instead of random weights")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--photo-size", type=int, default=375, help="short side of the JPEGs sent (375)")
    parser.add_argument("--requests", type=int, default=200, help="requests per served measurement")
    parser.add_argument("--seconds", type=float, default=3.0, help="least time per torch/onnxruntime measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per model-only figure (best kept)")
    parser.add_argument("--batch-size", type=int, default=16, help="--max-batch-size with batching on (16)")
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="--batch-timeout with batching on")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for torch, onnxruntime and the server's workers; 0 = each library's default. On a "
        "busy machine multi-threaded torch collapses (its OpenMP threads wait on each other), hence 1",
    )
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `catdog serve` argument")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from catdog.export import export_onnx, file_sha256
    from catdog.model import build_network, load_classifier, preprocess_config_for

    if args.ckpt:
        classifier = load_classifier(args.ckpt, exportable=True)
        network, config = classifier.network, classifier.preprocess_config
        model_name, sha = str(classifier.hparams.model_name), file_sha256(args.ckpt)
    else:
        torch.manual_seed(0)
        network = build_network(args.model, exportable=True).eval()
        config = preprocess_config_for(network, args.image_size)
        model_name, sha = args.model, None
    workdir = Path(tempfile.mkdtemp(prefix="catdog-bench-"))
    onnx_path = export_onnx(network, config, workdir / "bench.onnx", model_name, sha).path
    size = config.image_size

    # (a) torch eager vs onnxruntime --------------------------------------------------------------------
    options = ort.SessionOptions()
    if args.threads:
        torch.set_num_threads(args.threads)
        options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    print(
        f"{model_name} at {size} px, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), "
        f"torch {torch.__version__} and onnxruntime {ort.__version__}, {args.threads or 'default'} thread(s)"
    )
    eager: dict[int, float] = {}
    onnx_rate: dict[int, float] = {}
    for batch in (1, 16):
        x = torch.randn(batch, 3, size, size)
        x_np = x.numpy()

        def run_torch(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                network(x)

        def run_onnx(x_np: np.ndarray = x_np) -> None:
            session.run(None, {"image": x_np})

        for _ in range(args.rounds):  # interleaved, best of each: load from other programs only lowers a rate
            eager[batch] = max(eager.get(batch, 0.0), _rate(run_torch, batch, args.seconds))
            onnx_rate[batch] = max(onnx_rate.get(batch, 0.0), _rate(run_onnx, batch, args.seconds))
    print("\n(a) model only, images/s")
    print(f"{'batch':>6} {'torch eager':>12} {'onnxruntime':>12} {'ratio':>7}")
    for batch in (1, 16):
        print(f"{batch:>6} {eager[batch]:>12.1f} {onnx_rate[batch]:>12.1f} {onnx_rate[batch] / eager[batch]:>6.2f}x")

    # (b) in-process vs served ---------------------------------------------------------------------------
    jpegs = _jpegs(32, args.photo_size)
    per_image: list[float] = []

    def in_process() -> None:
        for data in jpegs:
            start = time.perf_counter()
            x = preprocess(data, config)[None]
            (logits,) = session.run(None, {"image": x})
            np.exp(logits - logits.max())
            per_image.append(time.perf_counter() - start)

    in_rate = max(_rate(in_process, len(jpegs), args.seconds, min_calls=2) for _ in range(args.rounds))
    in_ms = float(np.percentile(per_image, 50)) * 1000
    print(f"\n(b) JPEG ({args.photo_size} px short side) -> probabilities")
    print(f"in-process loop: {in_rate:.1f} images/s, {in_ms:.1f} ms per image (median)")

    results: dict[tuple[str, int], dict[str, float]] = {}
    for label, batch_size in (("batching off", 1), (f"batching on ({args.batch_size})", args.batch_size)):
        extra = ["--threads", str(args.threads), *args.serve_arg]
        process, url = _start_server(onnx_path, batch_size, args.batch_timeout, extra)
        try:
            for clients in (1, 8, 16):
                results[label, clients] = _load(f"{url}/predict/bench", jpegs, clients, args.requests)
        finally:
            process.terminate()
            process.wait(30)
    print(f"{'served':<24} {'clients':>7} {'images/s':>9} {'vs in-process':>14} {'p50 ms':>8} {'p99 ms':>8}")
    for (label, clients), r in results.items():
        ratio = r["rps"] / in_rate
        print(f"{label:<24} {clients:>7} {r['rps']:>9.1f} {ratio:>13.2f}x {r['p50']:>8.1f} {r['p99']:>8.1f}")

    on = f"batching on ({args.batch_size})"
    best8 = max(results["batching off", 8]["rps"], results[on, 8]["rps"])
    p50_1 = min(results["batching off", 1]["p50"], results[on, 1]["p50"])
    ratio_a = onnx_rate[1] / eager[1]
    print("\ngoals")
    met = "met" if best8 >= 0.9 * in_rate else "MISSED"
    print(f"served at 8 clients >= 0.9x in-process: {best8 / in_rate:.2f}x  {met}")
    print(
        f"single-client p50 within 10 ms of in-process per image: {p50_1:.1f} vs {in_ms:.1f} ms "
        f"(+{p50_1 - in_ms:.1f})  {'met' if p50_1 - in_ms <= 10 else 'MISSED'}"
    )
    print(f"onnxruntime >= 1.3x torch eager at batch 1: {ratio_a:.2f}x  {'met' if ratio_a >= 1.3 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
