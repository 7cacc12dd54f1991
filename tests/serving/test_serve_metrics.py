"""``GET /metrics``: a real ``catdog serve`` with two small models, scraped before and after known requests.

The counters must move by exactly the requests sent, with the right model, status code and error code
labels, whichever process (HTTP server, inference worker) counted them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from serve_helpers import (
    Server,
    asgi_call,
    cat,
    dog,
    encode,
    export_models,
    post,
    served,
    status_of,
    stop,
    upload,
)

from catdog.serving.http import Deadline
from catdog.serving.supervise import RestartCounter

#: Good and bad requests per model, as (kind, count); see :func:`_send`.
GOOD = {"pretrained": 7, "scratch": 4}
BAD = {
    "pretrained": [("invalid_image", 400, 2), ("missing_file", 422, 1)],
    "scratch": [("invalid_image", 400, 1), ("unsupported_media_type", 415, 2), ("empty_body", 400, 1)],
}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Two exported models, each with its own checkpoint sha256: name -> (path, sha256)."""
    models = export_models(tmp_path_factory.mktemp("models"), {"pretrained": 48, "scratch": 32}, sha256=_sha)
    return {name: (model.path, model.sha256) for name, model in models.items()}


@pytest.fixture(scope="module")
def tmpdir_of_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's TMPDIR: where it makes (and at exit removes) its metrics directory."""
    return tmp_path_factory.mktemp("server_tmp")


@pytest.fixture(scope="module")
def server(
    model_files: dict[str, tuple[Path, str]],
    tmpdir_of_server: Path,
    no_torch_path: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    args = [f"--model={name}={path}" for name, (path, _) in model_files.items()]
    args += ["--max-batch-size", "8", "--batch-timeout", "0.05", "--timeout", "20"]
    env = {"TMPDIR": str(tmpdir_of_server), "PROMETHEUS_MULTIPROC_DIR": str(tmpdir_of_server / "not-this-one")}
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with served(args, log, no_torch_path, env=env) as server:
        yield server


Samples = dict[tuple[str, frozenset], float]


def scrape(server: Server) -> Samples:
    """Every sample of ``GET /metrics``, by (sample name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def delta(before: Samples, after: Samples, name: str) -> dict[frozenset, float]:
    """How much each series of sample ``name`` moved (series that did not move are left out)."""
    keys = {labels for (sample, labels) in after if sample == name}
    moved = {labels: after[(name, labels)] - before.get((name, labels), 0.0) for labels in keys}
    return {labels: value for labels, value in moved.items() if value}


def labels(**kw: str) -> frozenset:
    return frozenset(kw.items())


def _send(server: Server, name: str, kind: str) -> requests.Response:
    """One request of ``kind``: ``good`` (a generated cat or dog JPEG) or the error code it must get."""
    if kind == "good":
        image = cat(len(name)) if name == "pretrained" else dog(len(name))
        return upload(server, name, encode(image, "JPEG"), timeout=30)
    if kind == "invalid_image":
        return upload(server, name, b"this is a text file, not an image\n", timeout=30)
    if kind == "missing_file":
        return requests.post(f"{server.url}/predict/{name}", files={"photo": ("a.jpg", b"x")}, timeout=30)
    if kind == "unsupported_media_type":
        return post(server, name, b"hello", content_type="text/plain", timeout=30)
    if kind == "empty_body":
        return post(server, name, b"", content_type="image/jpeg", timeout=30)
    raise ValueError(kind)


@pytest.mark.slow
def test_counters_move_by_exactly_the_requests_sent(server: Server) -> None:
    before = scrape(server)
    jobs = [(name, "good", 200) for name, count in GOOD.items() for _ in range(count)]
    jobs += [(name, kind, status) for name, bad in BAD.items() for kind, status, count in bad for _ in range(count)]
    with ThreadPoolExecutor(8) as pool:  # concurrent, so that the workers batch some of them
        responses = list(pool.map(lambda job: _send(server, job[0], job[1]), jobs))
    for (name, kind, status), response in zip(jobs, responses, strict=True):
        assert response.status_code == status, (name, kind, response.text)
        if status != 200:
            assert response.json()["error"] == kind
    after = scrape(server)

    expected_requests: dict[frozenset, float] = {}
    expected_errors: dict[frozenset, float] = {}
    for name, kind, status in jobs:
        key = labels(model=name, code=str(status))
        expected_requests[key] = expected_requests.get(key, 0) + 1
        if kind != "good":
            key = labels(model=name, error=kind)
            expected_errors[key] = expected_errors.get(key, 0) + 1
    assert delta(before, after, "catdog_requests_total") == expected_requests
    assert delta(before, after, "catdog_errors_total") == expected_errors

    per_model = {name: sum(1 for job in jobs if job[0] == name) for name in GOOD}
    assert delta(before, after, "catdog_request_duration_seconds_count") == {
        labels(model=name): count for name, count in per_model.items()
    }
    inf_bucket = delta(before, after, "catdog_request_duration_seconds_bucket")
    assert {k: v for k, v in inf_bucket.items() if ("le", "+Inf") in k} == {
        labels(model=name, le="+Inf"): count for name, count in per_model.items()
    }
    # Only good requests reach a worker; every one of them is in exactly one batch.
    assert delta(before, after, "catdog_batch_size_sum") == {labels(model=name): n for name, n in GOOD.items()}
    batches = delta(before, after, "catdog_batch_size_count")
    assert set(batches) == {labels(model=name) for name in GOOD}
    for name, count in GOOD.items():
        assert 1 <= batches[labels(model=name)] <= count
    assert delta(before, after, "catdog_inference_duration_seconds_count") == batches


@pytest.mark.slow
def test_models_loaded_with_their_checkpoint_sha256(server: Server, model_files: dict[str, tuple[Path, str]]) -> None:
    samples = scrape(server)
    loaded = {labels: value for (name, labels), value in samples.items() if name == "catdog_model_loaded"}
    expected = {
        labels(model=name, checkpoint_sha256=sha, calibration="none"): 1.0 for name, (_, sha) in model_files.items()
    }
    assert loaded == expected


@pytest.mark.slow
def test_the_page_and_scrapes_are_not_counted_as_model_requests(server: Server) -> None:
    before = scrape(server)
    assert requests.get(f"{server.url}/", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/predict/nobody", timeout=10).status_code in {404, 405}
    after = scrape(server)
    assert delta(before, after, "catdog_requests_total") == {}
    assert delta(before, after, "catdog_errors_total") == {}


def _worker_pid(server: Server, model: str) -> int:
    import re

    found = re.findall(rf"model '{model}' loaded from .* by worker pid (\d+)", server.log_text())
    assert found, server.log_text()[-3000:]
    return int(found[-1])


def _wait_for_health(server: Server, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = requests.get(f"{server.url}/health", timeout=5)
        if response.status_code == 200:
            return response.json()
        time.sleep(0.2)
    pytest.fail(f"/health not 200 within {seconds} s:\n{server.log_text()[-3000:]}")


@pytest.mark.slow
def test_a_killed_worker_is_counted_and_its_counts_stay(server: Server) -> None:
    before = scrape(server)
    assert before[("catdog_worker_restarts_total", labels(model="scratch"))] == 0
    os.kill(_worker_pid(server, "scratch"), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _wait_for_health(server, 30)["models"]["scratch"]["restarts"] < 1:
        assert time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.2)
    assert _send(server, "scratch", "good").status_code == 200
    after = scrape(server)
    assert delta(before, after, "catdog_worker_restarts_total") == {labels(model="scratch"): 1.0}
    assert after[("catdog_http_server_restarts_total", frozenset())] == 0
    # The dead worker's batches still count; the new worker's one request is added.
    assert delta(before, after, "catdog_batch_size_sum") == {labels(model="scratch"): 1.0}
    loaded = labels(model="scratch", checkpoint_sha256=_sha("scratch"), calibration="none")
    assert after[("catdog_model_loaded", loaded)] == 1.0


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@pytest.mark.slow
def test_the_server_owns_its_metrics_directory_and_removes_it(server: Server, tmpdir_of_server: Path) -> None:
    made = list(tmpdir_of_server.glob("catdog-metrics-*"))
    assert len(made) == 1, made
    assert list(made[0].glob("*.db")), "no process wrote its metrics there"
    assert not (tmpdir_of_server / "not-this-one").exists()  # an inherited PROMETHEUS_MULTIPROC_DIR is not used
    stop(server.process)
    assert server.process.returncode == 0, server.log_text()[-3000:]
    assert not made[0].exists()


# --------------------------------------------------------------------------------------------------
# the middleware on its own
# --------------------------------------------------------------------------------------------------
def _answer(status: int, body: bytes, delay: float = 0.0, raises: bool = False) -> object:
    async def app(scope: dict, receive: object, send: object) -> None:
        await asyncio.sleep(delay)
        if raises:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body[:3], "more_body": True})
        await send({"type": "http.response.body", "body": body[3:]})

    return app


def _call(app: object, path: str = "/predict/a") -> int:
    return status_of(asgi_call(app, path))


def _counts() -> Samples:
    from catdog.serving.metrics import instruments

    metrics = instruments()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for metric in (metrics.requests, metrics.errors, metrics.latency)
        for family in metric.collect()
        for sample in family.samples
    }


def test_middleware_counts_status_and_error_code_the_deadlines_own_answers_included() -> None:
    from catdog.serving.metrics import RequestMetrics

    restarts = RestartCounter(["a"])
    error = json.dumps({"error": "invalid_image", "detail": "not an image"}).encode()
    before = _counts()
    assert _call(RequestMetrics(_answer(200, b'{"label": "Cat"}'), ["a"])) == 200
    assert _call(RequestMetrics(_answer(400, error), ["a"])) == 400
    assert _call(RequestMetrics(_answer(502, b"<html>bad gateway</html>"), ["a"])) == 502
    assert _call(RequestMetrics(Deadline(_answer(200, b"{}", delay=5), 0.1, ["a"], restarts), ["a"])) == 504
    assert _call(RequestMetrics(_answer(200, b"{}"), ["a"]), path="/health") == 200  # not a model: not counted
    with pytest.raises(RuntimeError):
        _call(RequestMetrics(_answer(200, b"{}", raises=True), ["a"]))
    after = _counts()
    assert delta(before, after, "catdog_requests_total") == {
        labels(model="a", code=code): 1.0 for code in ("200", "400", "502", "504", "500")
    }
    assert delta(before, after, "catdog_errors_total") == {
        labels(model="a", error=code): 1.0 for code in ("invalid_image", "unknown", "timeout", "internal_error")
    }
    assert delta(before, after, "catdog_request_duration_seconds_count") == {labels(model="a"): 5.0}
