"""``catdog serve`` survives dead processes: real servers on 127.0.0.1, processes killed with signals.

An inference worker killed under load is replaced while the other model keeps answering; requests inside
it are answered within ``--timeout``; a killed HTTP server process is replaced; a killed manager process
or a model that dies on every load stops the server with exit status 1 and one clear line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from serve_helpers import (
    ATOL,
    ExportedModel,
    Server,
    cat,
    descendants,
    encode,
    export_models,
    model_options,
    running,
    start_server,
    stop,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc"),
]

TIMEOUT = 4.0  # --timeout of these servers
MARGIN = 3.0  # what a request may take beyond it (decoding, a loaded 2-core machine)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportedModel]:
    """Both at 32 px (conftest's are at 48 and 32)."""
    return export_models(tmp_path_factory.mktemp("models"), {"pretrained": 32, "scratch": 32})


def _start(models: dict[str, ExportedModel], no_torch_path: str, log: Path, *extra: str) -> Server:
    return start_server(
        [*model_options(models), "--timeout", str(TIMEOUT), "--max-batch-size", "4", *extra], log, no_torch_path
    )


def _pids(server: Server) -> dict[str, Any]:
    """The process ids the server logs once it runs: manager, HTTP servers, each model's worker."""
    found = re.search(
        r"processes: manager pid (\d+); HTTP servers pids \[([\d, ]+)\]; inference workers: (.*)", server.log_text()
    )
    assert found, server.log_text()[-3000:]
    workers = dict(re.findall(r"(\w+) pid (\d+)", found.group(3)))
    return {
        "manager": int(found.group(1)),
        "http": [int(pid) for pid in found.group(2).split(",")],
        **{name: int(pid) for name, pid in workers.items()},
    }


def _wait_for(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def _assert_json_error(response: requests.Response, codes: set[str]) -> None:
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] in codes and body["detail"], response.text


def test_killed_worker_is_replaced_under_load(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path: Path
) -> None:
    """Six clients on both models; the scratch worker is frozen past --timeout, then killed with SIGKILL."""
    server = _start(models, no_torch_path, tmp_path / "serve.log")
    pid = _pids(server)["scratch"]
    image = encode(cat(3), "PNG")
    expected = {name: model.probabilities(cat(3)) for name, model in models.items()}
    results: list[tuple[str, float, float, requests.Response]] = []  # model, sent, answered, response
    health: list[tuple[float, int, dict]] = []
    times: dict[str, float] = {}
    finish = time.monotonic() + 24

    def client(index: int) -> None:
        with requests.Session() as session:
            k = 0
            while time.monotonic() < finish:
                name = ("pretrained", "scratch")[(index + k) % 2]
                k += 1
                sent = time.monotonic()
                response = session.post(
                    f"{server.url}/predict/{name}", data=image, headers={"Content-Type": "image/png"}, timeout=30
                )
                results.append((name, sent, time.monotonic(), response))
                time.sleep(0.05)

    def poll_health() -> None:
        while time.monotonic() < finish:
            response = requests.get(f"{server.url}/health", timeout=10)
            health.append((time.monotonic(), response.status_code, response.json()))
            time.sleep(0.1)

    try:
        with ThreadPoolExecutor(7) as pool:
            futures = [pool.submit(client, i) for i in range(6)] + [pool.submit(poll_health)]
            time.sleep(2)
            os.kill(pid, signal.SIGSTOP)  # a hung worker: its requests must not hang with it
            times["stopped"] = time.monotonic()
            time.sleep(TIMEOUT + 1.5)
            os.kill(pid, signal.SIGKILL)
            times["killed"] = time.monotonic()
            for future in futures:
                future.result()
        final = requests.get(f"{server.url}/health", timeout=10)
    finally:
        stop(server.process)
    log = server.log_text()

    assert max(answered - sent for _, sent, answered, _ in results) <= TIMEOUT + MARGIN
    pretrained = [r for name, _, _, r in results if name == "pretrained"]
    assert len(pretrained) > 50 and all(r.status_code == 200 for r in pretrained)
    for response in pretrained:
        np.testing.assert_allclose(list(response.json()["probabilities"].values()), expected["pretrained"], atol=ATOL)
    scratch = [(sent, answered, r) for name, sent, answered, r in results if name == "scratch"]
    assert {r.status_code for _, _, r in scratch} <= {200, 503, 504}
    for _, _, response in scratch:
        if response.status_code != 200:
            _assert_json_error(response, {"timeout", "worker_restarted"})
    frozen = [r for sent, answered, r in scratch if sent > times["stopped"] and answered < times["killed"]]
    assert frozen and all(r.status_code == 504 for r in frozen), "requests to the frozen worker were not timed out"
    back = [answered for sent, answered, r in scratch if sent > times["killed"] and r.status_code == 200]
    assert back and min(back) - times["killed"] <= 15, "the killed model did not answer 200 again within 15 s"
    for response in [r for sent, _, r in scratch if sent > min(back)]:
        assert response.status_code == 200
        np.testing.assert_allclose(list(response.json()["probabilities"].values()), expected["scratch"], atol=ATOL)

    restarting = [body for t, status, body in health if t > times["killed"] and status == 503]
    assert restarting, "/health never said that a model was restarting"
    assert all(b["models"]["scratch"]["status"] == "restarting" for b in restarting)
    assert all(b["models"]["pretrained"]["status"] == "ready" for b in restarting)
    assert final.status_code == 200, final.text
    assert {name: info["restarts"] for name, info in final.json()["models"].items()} == {"pretrained": 0, "scratch": 1}
    assert re.search(rf"model 'scratch': inference worker 0 \(pid {pid}\) killed by SIGKILL; restarting it", log)
    assert "Traceback" not in log


def test_killed_http_server_is_replaced(models: dict[str, ExportedModel], no_torch_path: str, tmp_path: Path) -> None:
    server = _start(models, no_torch_path, tmp_path / "serve.log", "--api-servers", "2")
    try:
        killed = _pids(server)["http"][0]
        os.kill(killed, signal.SIGKILL)
        line = rf"HTTP server process LitServer-\d \(pid {killed}\) killed by SIGKILL; replaced by pid (\d+)"
        assert _wait_for(lambda: re.search(line, server.log_text()), 10), server.log_text()[-3000:]
        replacement = int(re.search(line, server.log_text()).group(1))  # type: ignore[union-attr]
        assert running(replacement) and replacement in descendants(server.process.pid)
        image = encode(cat(5), "PNG")
        for _ in range(20):  # both HTTP processes share the socket: every request is answered
            response = requests.post(
                f"{server.url}/predict/scratch", data=image, headers={"Content-Type": "image/png"}, timeout=10
            )
            assert response.status_code == 200, response.text
        body = requests.get(f"{server.url}/health", timeout=10).json()
        assert body["status"] == "ok" and body["http_server_restarts"] == 1
        children = descendants(server.process.pid)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(20) == 0
    finally:
        stop(server.process)
    assert _wait_for(lambda: not any(running(pid) for pid in children), 5)
    assert "Traceback" not in server.log_text()


def test_dead_manager_stops_the_server_with_status_1(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path: Path
) -> None:
    server = _start(models, no_torch_path, tmp_path / "serve.log")
    try:
        children = descendants(server.process.pid)
        manager = _pids(server)["manager"]
        killed = time.monotonic()
        os.kill(manager, signal.SIGKILL)
        returncode = server.process.wait(20)
        elapsed = time.monotonic() - killed
    finally:
        stop(server.process)
    log = server.log_text()
    assert returncode == 1, log[-3000:]
    assert elapsed < 15, f"took {elapsed:.1f} s to stop"  # seconds here; only a wait for a timeout takes 15
    last = log.strip().splitlines()[-1]
    assert last.startswith(
        f"catdog serve: error: the multiprocessing manager process (pid {manager}) killed by SIGKILL"
    )
    assert "restart policy" in last
    assert _wait_for(lambda: not any(running(pid) for pid in children), 5)
    assert "Traceback" not in log


def test_crash_loop_stops_after_max_restarts(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path: Path
) -> None:
    """The model file is broken after start-up: every restarted worker fails to load it."""
    path = tmp_path / "fragile.onnx"
    shutil.copy(models["scratch"].path, path)
    log = tmp_path / "serve.log"
    server = start_server([f"--model=fragile={path}", "--max-restarts", "2"], log, no_torch_path)
    try:
        children = descendants(server.process.pid)
        path.write_bytes(b"no longer an ONNX file")
        os.kill(_pids(server)["fragile"], signal.SIGKILL)
        returncode = server.process.wait(60)
    finally:
        stop(server.process)
    text = server.log_text()
    assert returncode == 1, text[-3000:]
    assert "(restart 1)" in text and "(restart 2)" in text and "(restart 3)" not in text
    assert "inference worker 0 (pid" in text and "could not load its model; restarting it" in text
    assert (
        text.strip()
        .splitlines()[-1]
        .startswith(
            "catdog serve: error: model 'fragile': its inference worker could not load its model again, more than 2 "
            "restarts within 600 s (--max-restarts)"
        )
    )
    assert _wait_for(lambda: not any(running(pid) for pid in children), 5)
    assert "Traceback" not in text
