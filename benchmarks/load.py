"""Load test: ``catdog serve`` with two models under concurrent clients, on loopback only.

    python benchmarks/load.py                                  # 60 s, 16 clients; exports two small models
    python benchmarks/load.py --model pretrained=models/pretrained.onnx --model scratch=models/scratch.onnx
    python benchmarks/load.py --seconds 600 --clients 32       # the soak (nice it on a shared machine)
    python benchmarks/load.py --overload --clients 64 --max-queue 4 --timeout 10   # past capacity
    python benchmarks/load.py --quick                          # 2 s, 4 clients: checks that it runs

The benchmark starts the server itself on 127.0.0.1 (no other address is ever contacted), warms it up,
then ``--clients`` threads post for ``--seconds``: 90 % good uploads (JPEG and PNG, multipart and raw
bodies, to both models) and 10 % bad ones, each bad kind with the one status it must get (400 not an
image / empty / truncated, 404 unknown model, 413 too large, 415 wrong content type, 422 wrong form field).

It reports requests/s, p50/p95/p99 latency (all requests and good ones), the statuses by kind, and checks:

* no unexpected status (a good upload answered anything but 200, a bad one anything but its status);
* every good answer equals the same image's in-process answer (``catdog.data.transforms.preprocess`` +
  onnxruntime on the same ONNX file): same label, probabilities within ``--tolerance``;
* the server's resident memory (the ``catdog serve`` process and all its children, from ``/proc``, so
  Linux only) grows by less than ``--max-rss-growth-mb`` between the end of the warm-up and the end;
* the good answers' p99 latency is at most ``--max-p99-ratio`` times their p50 (no long tail).

``--overload`` runs the server with ``--max-queue`` and ``--timeout`` and sends more than it can take:
then any upload to a model may also get ``503 overloaded`` (with ``Retry-After``), the checks are that
nothing else is unexpected, no answer takes longer than ``--timeout``, and the p99 of the 503s is below
the p50 of the 200s (a refusal is fast); the p99/p50 check is left out (queueing is the point there).

Exit status 0 when every check holds, 1 otherwise. The clients share the machine with the server: on a
small machine the requests/s figure is the server's under that load; the load average is printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import parse_args as parse_args_with_quick
from _load_parts import (
    HOST,
    Upload,
    build_uploads,
    export_models,
    good_images,
    in_process_probabilities,
    sample_rss,
    start_server,
    tree_rss_mb,
)

from catdog.utils import free_port

MAX_SECONDS = 600
MAX_CLIENTS = 64
QUICK = dict(seconds=2.0, warmup=1.0, clients=4, image_size=32)  # ``--quick``


@dataclass
class Tally:
    """What the clients saw (shared by the client threads; guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)
    good_latencies: list[float] = field(default_factory=list)
    refused_latencies: list[float] = field(default_factory=list)  # 503 overloaded
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> count
    unexpected: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    max_diff: float = 0.0
    connection_errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="two or more models")
    parser.add_argument("--seconds", type=float, default=60.0, help=f"measured duration (60; at most {MAX_SECONDS})")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of the same load before measuring (5)")
    parser.add_argument("--clients", type=int, default=16, help=f"concurrent clients (16; at most {MAX_CLIENTS})")
    parser.add_argument("--bad-fraction", type=float, default=0.1, help="share of bad uploads (0.1)")
    parser.add_argument("--image-size", type=int, default=64, help="input size of the exported models (64)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest probability difference (1e-5)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0, help="largest RSS growth in MB (50)")
    parser.add_argument("--max-p99-ratio", type=float, default=3.0, help="largest p99/p50 of good answers (3)")
    parser.add_argument("--overload", action="store_true", help="run past capacity with --max-queue (see above)")
    parser.add_argument("--max-queue", type=int, default=4, help="the server's --max-queue with --overload (4)")
    parser.add_argument("--timeout", type=float, default=30.0, help="the server's --timeout, in seconds (30)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `catdog serve` argument")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parse_args_with_quick(parser, argv, QUICK)
    if not 0 < args.seconds <= MAX_SECONDS or not 0 < args.clients <= MAX_CLIENTS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS}] and --clients in [1, {MAX_CLIENTS}]")
    if not 0 <= args.bad_fraction <= 1 or args.max_queue < 1 or args.timeout <= 0:
        parser.error("--bad-fraction must be between 0 and 1, --max-queue >= 1 and --timeout > 0")
    if len(args.model) == 1:
        parser.error("give at least two models (--model NAME=PATH twice), or none to export two small ones")
    args.serve_arg += ["--timeout", str(args.timeout)]
    if args.overload:
        args.serve_arg += ["--max-queue", str(args.max_queue)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="catdog-load-") as workdir:
        models = dict(spec.split("=", 1) for spec in args.model) if args.model else None
        return run_load(args, models or export_models(Path(workdir), args.image_size))


def run_load(args: argparse.Namespace, models: dict[str, str]) -> int:
    """Serve ``models``, run the warm-up and the measured load, and report."""
    images = good_images()
    expected = {name: [in_process_probabilities(path, image) for image in images] for name, path in models.items()}
    uploads = build_uploads(list(models), images)
    good = [u for u in uploads if u.expected_status == 200]
    bad = [u for u in uploads if u.expected_status != 200]

    port = free_port(HOST)
    server = start_server(models, port, args.serve_arg)
    try:
        rss_start = tree_rss_mb(server.pid)
        print(
            f"catdog serve pid {server.pid} on {HOST}:{port}, models {sorted(models)}; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}; {args.clients} clients, {args.seconds:.0f} s "
            f"(+{args.warmup:.0f} s warm-up), {args.bad_fraction:.0%} bad uploads; serve options {args.serve_arg}"
        )
        run_clients(port, good, bad, expected, args, Tally(), args.warmup)
        rss_warm = tree_rss_mb(server.pid)
        tally = Tally()
        samples: list[float] = []
        sampler_stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(server.pid, samples, sampler_stop), daemon=True)
        sampler.start()
        start = time.perf_counter()
        run_clients(port, good, bad, expected, args, tally, args.seconds)
        wall = time.perf_counter() - start
        sampler_stop.set()
        sampler.join()
        rss_end = tree_rss_mb(server.pid)
        alive = server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    # RSS at each fifth of the run (one sample a second): a leak climbs steadily, a warm-up levels off.
    fifths = {f"{round(wall * i / 5)}s": samples[min(len(samples) - 1, len(samples) * i // 5)] for i in range(1, 6)}
    rss = dict(start=rss_start, warm=rss_warm, **fifths, end=rss_end, peak=max(samples))
    return report(tally, wall, args, rss, alive)


def run_clients(
    port: int,
    good: list[Upload],
    bad: list[Upload],
    expected: dict[str, list[np.ndarray]],
    args: argparse.Namespace,
    tally: Tally,
    seconds: float,
) -> None:
    """``args.clients`` threads post uploads until ``seconds`` have passed (each finishes its request)."""
    deadline = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection(HOST, port, timeout=args.timeout + 30)
        while time.perf_counter() < deadline:
            upload = rng.choice(bad) if rng.random() < args.bad_fraction else rng.choice(good)
            start = time.perf_counter()
            try:
                connection.request(
                    "POST",
                    f"/predict/{upload.model}",
                    body=upload.body,
                    headers={"Content-Type": upload.content_type},
                )
                response = connection.getresponse()
                status, raw = response.status, response.read()
            except (OSError, http.client.HTTPException) as err:
                connection.close()  # the server closed the connection (e.g. after a 413): reconnect
                connection = http.client.HTTPConnection(HOST, port, timeout=args.timeout + 30)
                with tally.lock:
                    tally.connection_errors.append(f"{upload.kind}: {err!r}")
                continue
            elapsed = time.perf_counter() - start
            check_answer(upload, status, raw, expected, args, tally, elapsed)
        connection.close()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def check_answer(
    upload: Upload,
    status: int,
    raw: bytes,
    expected: dict[str, list[np.ndarray]],
    args: argparse.Namespace,
    tally: Tally,
    elapsed: float,
) -> None:
    """Record one answer: its status against the expected one, a good answer against the in-process one."""
    problem, diff, tolerance = None, 0.0, args.tolerance
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    refused = status == 503 and isinstance(payload, dict) and payload.get("error") == "overloaded"
    if refused and args.overload and upload.model in expected:
        pass  # past --max-queue: a 503 at once is the right answer to any upload to a served model
    elif status != upload.expected_status:
        problem = f"{upload.kind} to {upload.model}: status {status}, expected {upload.expected_status}: {raw[:200]!r}"
    elif status != 200 and not (isinstance(payload, dict) and {"error", "detail"} <= set(payload)):
        problem = f"{upload.kind}: {status} without a JSON error body: {raw[:200]!r}"
    mismatch = None
    if problem is None and status == 200:
        want = expected[upload.model][upload.image or 0]
        try:
            got = np.array([payload["probabilities"]["Cat"], payload["probabilities"]["Dog"]])
            diff = float(np.abs(got - want).max())
            if payload["model"] != upload.model or payload["class_id"] != int(np.argmax(want)) or diff > tolerance:
                mismatch = f"{upload.kind} image {upload.image} to {upload.model}: {payload} vs in-process {want}"
        except (KeyError, TypeError) as err:
            mismatch = f"{upload.kind} to {upload.model}: malformed answer {payload!r} ({err!r})"
    with tally.lock:
        tally.latencies.append(elapsed)
        tally.statuses[upload.kind, status] += 1
        tally.max_diff = max(tally.max_diff, diff)
        if status == 200:
            tally.good_latencies.append(elapsed)
        if refused:
            tally.refused_latencies.append(elapsed)
        if problem is not None:
            tally.unexpected.append(problem)
        if mismatch is not None:
            tally.mismatches.append(mismatch)


def report(tally: Tally, wall: float, args: argparse.Namespace, rss: dict[str, float], alive: bool) -> int:
    """Print the figures and the checks; 0 when every check holds."""
    figures = figures_of(tally, wall, args, rss)
    total = figures["requests"]
    print(f"\n{total} requests in {wall:.1f} s: {figures['requests_per_s']} requests/s")
    for label, key in (("all", "latency_ms"), ("good", "good_latency_ms"), ("503", "refused_latency_ms")):
        lat = figures[key]
        print(f"latency ms, {label + ':':<5} p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}")
    print("statuses: " + ", ".join(f"{status}: {n}" for status, n in figures["statuses"].items()))
    for (kind, status), count in sorted(tally.statuses.items()):
        print(f"  {kind:<22} {status}  {count}")
    print(
        f"server RSS MB (process tree): at start {rss['start']:.1f}, after warm-up {rss['warm']:.1f}, "
        f"end {rss['end']:.1f}, peak {rss['peak']:.1f}; growth over the run {figures['rss_growth_mb']:+.1f}"
    )
    timeline = [f"{key} {value:.1f}" for key, value in rss.items() if key.endswith("s")]
    print("  during the run: " + ", ".join(timeline))
    checks = checks_of(tally, figures, args, alive)
    print("\nchecks")
    for name, ok in checks.items():
        print(f"  {'ok    ' if ok else 'FAILED'} {name}")
    for label, problems in (
        ("unexpected", tally.unexpected),
        ("connection", tally.connection_errors),
        ("mismatch", tally.mismatches),
    ):
        for problem in problems[:5]:
            print(f"  {label}: {problem}")
    if args.json is not None:
        args.json.write_text(json.dumps({**figures, "checks": checks}, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p95, p99 and max in milliseconds (zeros for no sample)."""
    ms = np.array(seconds) * 1000 if seconds else np.zeros(1)
    found = {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)}
    return {**found, "max": round(float(ms.max()), 1)}


def figures_of(tally: Tally, wall: float, args: argparse.Namespace, rss: dict[str, float]) -> dict:
    by_status: Counter = Counter()
    for (_, status), count in tally.statuses.items():
        by_status[status] += count
    total = len(tally.latencies)
    return {
        "mode": "overload" if args.overload else "load",
        "seconds": round(wall, 1),
        "clients": args.clients,
        "serve_options": args.serve_arg,
        "requests": total,
        "requests_per_s": round(total / wall, 1),
        "latency_ms": percentiles(tally.latencies),
        "good_latency_ms": percentiles(tally.good_latencies),
        "refused_latency_ms": percentiles(tally.refused_latencies),
        "statuses": {str(status): count for status, count in sorted(by_status.items())},
        "statuses_by_kind": {f"{kind} {status}": n for (kind, status), n in sorted(tally.statuses.items())},
        "unexpected_statuses": len(tally.unexpected),
        "connection_errors": len(tally.connection_errors),
        "answer_mismatches": len(tally.mismatches),
        "max_probability_diff": tally.max_diff,
        "rss_mb": {key: round(value, 1) for key, value in rss.items()},
        "rss_growth_mb": round(rss["end"] - rss["warm"], 1),
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


def checks_of(tally: Tally, figures: dict, args: argparse.Namespace, alive: bool) -> dict[str, bool]:
    good, refused = figures["good_latency_ms"], figures["refused_latency_ms"]
    checks = {
        "0 unexpected statuses": not tally.unexpected,
        "0 connection errors": not tally.connection_errors,
        f"every good answer equals in-process (max diff {tally.max_diff:.1e})": not tally.mismatches,
        f"RSS growth < {args.max_rss_growth_mb:.0f} MB": figures["rss_growth_mb"] < args.max_rss_growth_mb,
        "the server still runs": alive,
        "requests were answered": figures["requests"] > 0 and bool(tally.good_latencies),
    }
    if args.overload:
        slowest = figures["latency_ms"]["max"]
        checks[f"no answer past --timeout {args.timeout:g} s (slowest {slowest / 1000:.2f} s)"] = (
            slowest < args.timeout * 1000
        )
        checks[f"503 p99 {refused['p99']} ms < 200 p50 {good['p50']} ms (a refusal is fast)"] = (
            not tally.refused_latencies or refused["p99"] < good["p50"]
        )
    else:
        ratio = good["p99"] / max(good["p50"], 1e-9)
        checks[f"good p99 <= {args.max_p99_ratio:g} x p50 (p99/p50 = {ratio:.2f})"] = ratio <= args.max_p99_ratio
    return checks


if __name__ == "__main__":
    sys.exit(main())
