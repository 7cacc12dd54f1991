"""Load test: ``catdog serve`` with two models under 16 concurrent clients for 60 seconds, on loopback only.

    python benchmarks/load.py                                  # exports two small random-weight models
    python benchmarks/load.py --model pretrained=models/pretrained.onnx --model scratch=models/scratch.onnx
    python benchmarks/load.py --seconds 20 --clients 8         # shorter (at most 600 s, 64 clients)
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
  Linux only) grows by less than ``--max-rss-growth-mb`` between the end of the warm-up and the end.

Exit status 0 when every check holds, 1 otherwise. The clients share the machine with the server: on a
small machine the requests/s figure is the server's under that load; the load average is printed.
"""

from __future__ import annotations

import argparse
import http.client
import io
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
from _common import parse_args, start_serve

from catdog.data.sample_data import breed_style, draw_cat, draw_dog
from catdog.utils import free_port

HOST = "127.0.0.1"  # loopback only, by design
MAX_SECONDS = 600
MAX_CLIENTS = 64
MAX_UPLOAD_MB = 1.0  # the server's --max-upload-mb here, so a "too large" upload stays small
BOUNDARY = "catdog-load-boundary-5c2a"
QUICK = dict(seconds=2.0, warmup=1.0, clients=4, image_size=32)  # ``--quick``


@dataclass(frozen=True)
class Upload:
    """One request the clients can send: what it is, where it goes and the status it must get."""

    kind: str
    model: str
    body: bytes
    content_type: str
    expected_status: int
    image: int | None = None  # index into the good images (good uploads only)


@dataclass
class Tally:
    """What the clients saw (shared by the client threads; guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)
    good_latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> count
    unexpected: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    max_diff: float = 0.0
    connection_errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="two or more models")
    parser.add_argument("--seconds", type=float, default=60.0, help=f"measured duration (60; at most {MAX_SECONDS})")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of the same load before measuring (5)")
    parser.add_argument("--clients", type=int, default=16, help=f"concurrent clients (16; at most {MAX_CLIENTS})")
    parser.add_argument("--bad-fraction", type=float, default=0.1, help="share of bad uploads (0.1)")
    parser.add_argument("--image-size", type=int, default=64, help="input size of the exported models (64)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest probability difference (1e-5)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0, help="largest RSS growth in MB (50)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `catdog serve` argument")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parse_args(parser, argv, QUICK)
    if not 0 < args.seconds <= MAX_SECONDS or not 0 < args.clients <= MAX_CLIENTS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS}] and --clients in [1, {MAX_CLIENTS}]")
    if not 0 <= args.bad_fraction <= 1:
        parser.error("--bad-fraction must be between 0 and 1")

    workdir = Path(tempfile.mkdtemp(prefix="catdog-load-"))
    models = dict(spec.split("=", 1) for spec in args.model) if args.model else export_models(workdir, args.image_size)
    if len(models) < 2:
        parser.error("give at least two models (--model NAME=PATH twice), or none to export two small ones")
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
            f"(+{args.warmup:.0f} s warm-up), {args.bad_fraction:.0%} bad uploads"
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
        connection = http.client.HTTPConnection(HOST, port, timeout=60)
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
                connection = http.client.HTTPConnection(HOST, port, timeout=60)
                with tally.lock:
                    tally.connection_errors.append(f"{upload.kind}: {err!r}")
                continue
            elapsed = time.perf_counter() - start
            check_answer(upload, status, raw, expected, args.tolerance, tally, elapsed)
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
    tolerance: float,
    tally: Tally,
    elapsed: float,
) -> None:
    """Record one answer: its status against the expected one, a good answer against the in-process one."""
    problem, diff = None, 0.0
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if status != upload.expected_status:
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
        if problem is not None:
            tally.unexpected.append(problem)
        if mismatch is not None:
            tally.mismatches.append(mismatch)


def report(tally: Tally, wall: float, args: argparse.Namespace, rss: dict[str, float], alive: bool) -> int:
    """Print the figures and the checks; 0 when every check holds."""
    total = len(tally.latencies)
    ms = np.array(tally.latencies) * 1000 if total else np.zeros(1)
    good_ms = np.array(tally.good_latencies) * 1000 if tally.good_latencies else np.zeros(1)
    by_status = Counter()
    for (_, status), count in tally.statuses.items():
        by_status[status] += count
    figures = {
        "seconds": round(wall, 1),
        "clients": args.clients,
        "requests": total,
        "requests_per_s": round(total / wall, 1),
        "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)},
        "good_latency_ms": {f"p{q}": round(float(np.percentile(good_ms, q)), 1) for q in (50, 95, 99)},
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
    print(f"\n{total} requests in {wall:.1f} s: {figures['requests_per_s']} requests/s")
    lat, good_lat = figures["latency_ms"], figures["good_latency_ms"]
    print(f"latency ms, all:  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}")
    print(f"latency ms, good: p50 {good_lat['p50']}  p95 {good_lat['p95']}  p99 {good_lat['p99']}")
    print("statuses: " + ", ".join(f"{status}: {n}" for status, n in figures["statuses"].items()))
    for (kind, status), count in sorted(tally.statuses.items()):
        print(f"  {kind:<22} {status}  {count}")
    print(
        f"server RSS MB (process tree): at start {rss['start']:.1f}, after warm-up {rss['warm']:.1f}, "
        f"end {rss['end']:.1f}, peak {rss['peak']:.1f}; growth over the run {figures['rss_growth_mb']:+.1f}"
    )
    timeline = [f"{key} {value:.1f}" for key, value in rss.items() if key.endswith("s")]
    print("  during the run: " + ", ".join(timeline))
    checks = {
        "0 unexpected statuses": not tally.unexpected,
        "0 connection errors": not tally.connection_errors,
        f"every good answer equals in-process (max diff {tally.max_diff:.1e})": not tally.mismatches,
        f"RSS growth < {args.max_rss_growth_mb:.0f} MB": figures["rss_growth_mb"] < args.max_rss_growth_mb,
        "the server still runs": alive,
        "requests were answered": total > 0,
    }
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


# --------------------------------------------------------------------------------------------------
# models, images, uploads
# --------------------------------------------------------------------------------------------------
def export_models(workdir: Path, image_size: int) -> dict[str, str]:
    """Two small timm networks with random weights (heads included), exported with ``catdog export``'s core."""
    import torch

    from catdog.export.onnx import export_onnx
    from catdog.training.network import build_network, preprocess_config_for

    paths = {}
    for seed, (name, arch) in enumerate((("first", "test_efficientnet"), ("second", "test_resnet"))):
        torch.manual_seed(seed)
        network = build_network(arch, exportable=True).eval()
        head = network.get_classifier()  # a fresh head is zero: random weights make answers depend on the image
        torch.nn.init.normal_(head.weight, std=0.5)
        torch.nn.init.normal_(head.bias, std=0.5)
        path = workdir / f"{name}.onnx"
        export_onnx(network, preprocess_config_for(network, image_size), path, model_name=arch)
        paths[name] = str(path)
    return paths


def good_images(count: int = 12) -> list[tuple[bytes, str]]:
    """Generated cats and dogs of several sizes and aspect ratios, as (bytes, content type), JPEG and PNG."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(count):
        size = (96, 160, 240)[i % 3]
        image = draw_cat(rng, size) if i % 2 else draw_dog(rng, size, breed_style(i % 5, 0))
        if i % 4 == 3:
            image = image.resize((size, size * 3 // 4))  # landscape
        buffer = io.BytesIO()
        fmt, content_type = ("PNG", "image/png") if i % 3 == 2 else ("JPEG", "image/jpeg")
        image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append((buffer.getvalue(), content_type))
    return out


def in_process_probabilities(model_path: str, image: tuple[bytes, str]) -> np.ndarray:
    """The answer the server must give: the file's own preprocessing, then onnxruntime, then softmax."""
    import onnxruntime as ort

    from catdog.data.transforms import PreprocessConfig, preprocess

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    config = PreprocessConfig.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    (logits,) = session.run(None, {session.get_inputs()[0].name: preprocess(io.BytesIO(image[0]), config)[None]})
    shifted = np.exp(logits[0].astype(np.float64) - logits[0].max())
    return shifted / shifted.sum()


def multipart(field_name: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def build_uploads(models: list[str], images: list[tuple[bytes, str]]) -> list[Upload]:
    """Every good upload (each image to each model, multipart and raw) and the bad kinds with their status."""
    uploads = []
    for model in models:
        for index, (data, content_type) in enumerate(images):
            body, multipart_type = multipart("file", f"image{index}", data, content_type)
            uploads.append(Upload("good multipart", model, body, multipart_type, 200, index))
            uploads.append(Upload("good raw body", model, data, content_type, 200, index))
    jpeg = images[0][0]
    first = models[0]
    text, text_type = multipart("file", "notes.txt", b"this is not an image\n" * 20, "text/plain")
    truncated, truncated_type = multipart("file", "cut.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")
    wrong_field, wrong_field_type = multipart("image", "cat.jpg", jpeg, "image/jpeg")
    too_large = b"\xff\xd8" + bytes(int(MAX_UPLOAD_MB * 1.5 * 2**20))  # above the limit in MB or MiB
    uploads += [
        Upload("bad: not an image", first, text, text_type, 400),
        Upload("bad: empty body", first, b"", "image/jpeg", 400),
        Upload("bad: truncated JPEG", models[-1], truncated, truncated_type, 400),
        Upload("bad: unknown model", "no-such-model", jpeg, "image/jpeg", 404),
        Upload("bad: too large", first, too_large, "image/jpeg", 413),
        Upload("bad: content type", models[-1], b"{}", "application/json", 415),
        Upload("bad: form field", first, wrong_field, wrong_field_type, 422),
    ]
    return uploads


# --------------------------------------------------------------------------------------------------
# the server and its memory
# --------------------------------------------------------------------------------------------------
def start_server(models: dict[str, str], port: int, extra: list[str]) -> subprocess.Popen:
    """``catdog serve`` on 127.0.0.1:``port``, once ``/health`` answers 200."""
    args = [arg for name, path in models.items() for arg in ("--model", f"{name}={path}")]
    args += ["--log-level", "warning", "--max-upload-mb", str(MAX_UPLOAD_MB), *extra]
    return start_serve(args, HOST, port)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB (10^6 bytes), from /proc."""
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue  # the process ended meanwhile (or is a zombie without VmRSS)
    return total / 1e6


def sample_rss(pid: int, samples: list[float], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        samples.append(tree_rss_mb(pid))
    samples.append(tree_rss_mb(pid))


if __name__ == "__main__":
    sys.exit(main())
