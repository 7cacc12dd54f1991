"""Load on a model for ``benchmarks/serve.py``: concurrent clients, in-process or over HTTP, with latencies.

In-process, one thread runs one onnxruntime session and batches what is queued like ``catdog serve``'s
worker (:class:`InProcessWorker`); over HTTP, each client thread has its own ``requests`` session.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import requests

from catdog.data.transforms import PreprocessConfig, preprocess


class InProcessWorker:
    """One thread running one onnxruntime session, batching what is queued like the server's worker."""

    def __init__(self, session: object, input_name: str, max_batch_size: int, batch_timeout: float) -> None:
        self.session, self.input_name = session, input_name
        self.max_batch_size, self.batch_timeout = max_batch_size, batch_timeout if max_batch_size > 1 else 0.0
        self.queue: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of one preprocessed image (blocks until its batch has run)."""
        future: Future = Future()
        self.queue.put((x, future))
        return future.result()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            batch = [item]
            deadline = time.perf_counter() + self.batch_timeout
            while len(batch) < self.max_batch_size:
                try:
                    more = self.queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if more is None:
                    self.queue.put(None)
                    break
                batch.append(more)
            (logits,) = self.session.run(None, {self.input_name: np.stack([x for x, _ in batch])})
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
            for (_, future), p in zip(batch, probs, strict=True):
                future.set_result(p)


def run_load(make_call: Callable[[], Callable[[bytes], None]], jpegs: list[bytes], clients: int, total: int) -> dict:
    """``clients`` threads run ``total`` calls in all; throughput and caller-side latency percentiles.

    ``make_call`` gives each client thread its own ``call(jpeg)`` (an HTTP session, or in-process work).
    """
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))
    barrier = threading.Barrier(clients + 1)
    failures: list[BaseException] = []

    def client() -> None:
        call = make_call()
        try:
            call(jpegs[0])  # warm-up (the connection, the threads)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            failures.append(err)
        barrier.wait()
        while not failures:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                call(jpegs[i % len(jpegs)])
            except BaseException as err:  # noqa: BLE001 - reported by the main thread
                failures.append(err)
                return
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise SystemExit(f"a call failed: {failures[0]!r}")
    ms = np.array(latencies) * 1000
    return {"rps": total / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def http_call(url: str) -> Callable[[], Callable[[bytes], None]]:
    def make() -> Callable[[bytes], None]:
        session = requests.Session()

        def call(jpeg: bytes) -> None:
            response = session.post(url, data=jpeg, headers={"Content-Type": "image/jpeg"})
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

        return call

    return make


def in_process_call(worker: InProcessWorker, config: PreprocessConfig) -> Callable[[], Callable[[bytes], None]]:
    def make() -> Callable[[bytes], None]:
        def call(jpeg: bytes) -> None:
            worker.predict(preprocess(jpeg, config))

        return call

    return make
