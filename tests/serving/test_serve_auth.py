"""``catdog serve`` in the open: API keys, the queue bound, the probes and the default address.

One real server with two small models, started without ``--host``, two keys in ``CATDOG_API_KEY``, a third
in ``--api-key-file``, ``--max-queue 2`` and batching off.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from serve_helpers import ExportedModel, Server, cat, dog, encode, model_options, served
from test_serve_metrics import delta, labels, scrape

from catdog import CatDogError
from catdog.serving.access import ApiKeys, load_api_keys
from catdog.serving.cli import build_parser

pytestmark = pytest.mark.slow

ENV_KEYS = ("env-key-one-5f0c9a7d1e", "env-key-two-b83e61aa40")
FILE_KEY = "file-key-three-7d2e90c4"
WRONG_KEY = "wrong-key-not-accepted-11"
MAX_QUEUE = 2


@pytest.fixture(scope="module")
def server(
    models: dict[str, ExportedModel], no_torch_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("auth")
    key_file = folder / "keys"
    key_file.write_text(f"# accepted keys\n{FILE_KEY}\n")
    args = model_options(models) + ["--max-batch-size", "1", "--timeout", "20", "--log-level", "debug"]
    args += ["--max-queue", str(MAX_QUEUE), "--api-key-file", str(key_file)]
    env = {"CATDOG_API_KEY": ",".join(ENV_KEYS), "CATDOG_HOST": ""}
    with served(args, folder / "serve.log", no_torch_path, env=env, host=None) as server:
        yield server


def predict(server: Server, name: str, headers: dict[str, str] | None = None) -> requests.Response:
    image = cat(1) if name == "pretrained" else dog(2)
    files = {"file": ("a.jpg", encode(image, "JPEG"), "image/jpeg")}
    return requests.post(f"{server.url}/predict/{name}", files=files, headers=headers or {}, timeout=30)


# --------------------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------------------
def test_every_key_is_accepted_in_both_header_forms(server: Server) -> None:
    for key in (*ENV_KEYS, FILE_KEY):
        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
            response = predict(server, "pretrained", headers)
            assert response.status_code == 200, (headers, response.text)
            assert response.json()["model"] == "pretrained"
    assert predict(server, "scratch", {"authorization": f"bearer {ENV_KEYS[0]}"}).status_code == 200


def test_no_key_or_a_wrong_one_gets_401_json_and_is_counted(server: Server) -> None:
    refused = [
        {},
        {"X-API-Key": WRONG_KEY},
        {"Authorization": f"Bearer {WRONG_KEY}"},
        {"Authorization": ENV_KEYS[0]},  # no scheme
        {"Authorization": f"Basic {ENV_KEYS[0]}"},  # another scheme
        {"X-API-Key": ENV_KEYS[0][:-1]},  # a prefix of a key
        {"X-API-Key": ENV_KEYS[0] + "x"},
    ]
    before = scrape(server)
    for headers in refused:
        response = predict(server, "scratch", headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    after = scrape(server)
    assert delta(before, after, "catdog_requests_total") == {labels(model="scratch", code="401"): len(refused)}
    assert delta(before, after, "catdog_errors_total") == {labels(model="scratch", error="unauthorized"): len(refused)}


def test_open_endpoints_stay_open(server: Server) -> None:
    for path in ("/livez", "/readyz", "/health", "/metrics", "/"):
        assert requests.get(f"{server.url}{path}", timeout=10).status_code == 200, path
    assert requests.get(f"{server.url}/livez", timeout=10).json() == {"status": "alive"}
    assert requests.get(f"{server.url}/readyz", timeout=10).json() == {"status": "ready"}
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert health["api_key_required"] is True
    assert set(health["models"]) == {"pretrained", "scratch"}


def test_the_keys_never_reach_the_log(server: Server) -> None:
    predict(server, "pretrained", {"X-API-Key": WRONG_KEY})
    predict(server, "pretrained", {"Authorization": f"Bearer {ENV_KEYS[1]}"})
    log = server.log_text()
    assert "requires an API key" in log  # the log is the debug-level one, with the requests in it
    for key in (*ENV_KEYS, FILE_KEY, WRONG_KEY):
        assert key not in log
    assert all(key not in repr(load_api_keys(",".join(ENV_KEYS))) for key in ENV_KEYS)


def test_default_address_is_loopback(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    listening = {
        line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:] if line.split()[3] == "0A"
    }
    assert f"0100007F:{port:04X}" in listening  # 127.0.0.1, little-endian hex
    assert f"00000000:{port:04X}" not in listening  # not 0.0.0.0
    monkeypatch.delenv("CATDOG_HOST", raising=False)
    assert build_parser().parse_args([]).host == "127.0.0.1"


def test_key_options_refuse_short_keys_and_empty_files(tmp_path: Path) -> None:
    assert not ApiKeys().required
    assert load_api_keys(f" {ENV_KEYS[0]} , ").accepts(ENV_KEYS[0])
    with pytest.raises(CatDogError, match="key 2 of 2 is shorter than 16") as err:
        load_api_keys(f"{ENV_KEYS[0]},short")
    assert "short" not in str(err.value).replace("shorter", "")
    empty = tmp_path / "keys"
    empty.write_text("# nothing yet\n")
    with pytest.raises(CatDogError, match="holds no key"):
        load_api_keys(file=str(empty))
    with pytest.raises(CatDogError, match="--api-key-file .*missing"):
        load_api_keys(file=str(tmp_path / "missing"))


# --------------------------------------------------------------------------------------------------
# --max-queue
# --------------------------------------------------------------------------------------------------
def stalled_upload(server: Server, name: str) -> socket.socket:
    """A request to ``name`` whose headers arrived but whose body never ends: it holds a place in the queue."""
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /predict/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {ENV_KEYS[0]}\r\n"
        "Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
    )
    sock.sendall(head.encode() + b"\xff\xd8")
    return sock


def queue_depth(server: Server, name: str) -> float:
    return scrape(server)[("catdog_queue_depth", labels(model=name))]


def wait_for_depth(server: Server, name: str, depth: int) -> None:
    deadline = time.monotonic() + 20
    while queue_depth(server, name) != depth:
        assert time.monotonic() < deadline, f"the queue of {name} never reached {depth}"
        time.sleep(0.1)


def test_a_full_queue_answers_503_at_once_while_the_other_model_answers(server: Server) -> None:
    key = {"X-API-Key": ENV_KEYS[0]}
    before = scrape(server)
    stalled = [stalled_upload(server, "pretrained") for _ in range(MAX_QUEUE)]
    try:
        wait_for_depth(server, "pretrained", MAX_QUEUE)
        refused = predict(server, "pretrained", key)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        for headers in ({}, {"X-API-Key": WRONG_KEY}):  # the key is checked before the queue: 401, not 503
            unauthorized = predict(server, "pretrained", headers)
            assert (unauthorized.status_code, unauthorized.json()["error"]) == (401, "unauthorized")
        assert predict(server, "scratch", key).status_code == 200  # the other model is not affected
        assert requests.get(f"{server.url}/livez", timeout=5).status_code == 200
    finally:
        for sock in stalled:
            sock.close()
    wait_for_depth(server, "pretrained", 0)  # a client that goes away gives its place back
    assert predict(server, "pretrained", key).status_code == 200
    moved = delta(before, scrape(server), "catdog_errors_total")
    assert moved[labels(model="pretrained", error="overloaded")] == 1
    assert moved[labels(model="pretrained", error="unauthorized")] == 2


def test_a_burst_gets_200_or_a_fast_503_and_nothing_else(server: Server) -> None:
    key = {"X-API-Key": ENV_KEYS[1]}
    with ThreadPoolExecutor(24) as pool:
        burst = list(pool.map(lambda i: predict(server, ("pretrained", "scratch")[i % 4 == 0], key), range(96)))
    statuses = {(r.status_code, r.json().get("error")) for r in burst}
    assert statuses <= {(200, None), (503, "overloaded")}, statuses
    assert any(r.status_code == 200 for r in burst)
    for response in burst:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
    wait_for_depth(server, "pretrained", 0)
    wait_for_depth(server, "scratch", 0)
