"""``catdog demo``: the whole pipeline at its smallest settings, and the demo's own safeguards."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from PIL import Image

from catdog import DISPLAY_NAMES, CatDogError
from catdog.cli import main as catdog
from catdog.demo import MARKER, PRETRAINED_ENV, Server, find_pretrained_weights, plan_models, prepare_workdir
from catdog.metrics import read_metrics

MODEL = "tf_efficientnetv2_b2"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm state dict with its 1000-class ImageNet head, as a real weights file has (random values)."""
    import timm
    import torch

    path = tmp_path_factory.mktemp("weights") / f"{MODEL}.pth"
    torch.save(timm.create_model(MODEL, pretrained=False).state_dict(), path)
    return path


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path: Path, weights_file: Path, capsys: pytest.CaptureFixture) -> None:
    workdir = tmp_path / "demo-run"
    smallest = "--image-size 32 --epochs 1 --cats 16 --dogs-per-breed 3 --breeds 5 --batch-size 16".split()  # noqa: SIM905
    argv = ["demo", "--workdir", str(workdir), *smallest, "--pretrained-file", str(weights_file)]
    assert catdog(argv) == 0
    out = capsys.readouterr().out

    # Every step ran the real command, in order.
    commands = re.findall(r"^\$ catdog (\S+)", out, flags=re.MULTILINE)
    assert commands == ["sample-data", "fuse", "fit", "test", "fit", "test", "export", "serve", "report"]
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            assert any((workdir / "dataset" / split / label).glob("*.jpg"))

    # Both models trained, tested, exported.
    scratch = read_metrics(workdir / "runs" / "scratch" / "metrics.json")
    pretrained = read_metrics(workdir / "runs" / "pretrained" / "metrics.json")
    assert (scratch.pretrained, pretrained.pretrained) == (False, True)
    assert scratch.epochs == pretrained.epochs == 1
    assert sum(map(sum, scratch.confusion_matrix)) == sum(map(sum, pretrained.confusion_matrix)) > 0
    for name in ("scratch", "pretrained"):
        assert (workdir / "models" / f"{name}.onnx").stat().st_size > 1_000_000

    # One cat and one dog sent to each endpoint, every answer well formed.
    answers = [json.loads(body) for body in re.findall(r"^  200 (\{.*\})$", out, flags=re.MULTILINE)]
    assert sorted(a["model"] for a in answers) == ["pretrained", "pretrained", "scratch", "scratch"]
    for answer in answers:
        assert answer["label"] in DISPLAY_NAMES
        assert answer["class_id"] == DISPLAY_NAMES.index(answer["label"])
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    for truth in ("cat", "dog"):
        with Image.open(workdir / "requests" / f"{truth}.jpg") as image:
            assert image.format == "JPEG" and image.height == 32
    table = out[out.index("Answers from catdog serve:") :]
    assert len(re.findall(r"^  (scratch|pretrained) +(cat|dog) +(Cat|Dog) ", table, flags=re.MULTILINE)) == 4

    # The results table has both runs; plots are next to it.
    results = (workdir / "results.md").read_text()
    assert "| scratch " in results and "| pretrained " in results
    assert (workdir / "results-accuracy.png").is_file()
    assert len(list(workdir.glob("results-confusion-*.png"))) == 2

    # The server was stopped and its port is free again.
    match = re.search(r"server stopped \(exit status (\S+)\)", out)
    assert match and match.group(1) == "0"
    port = int(re.search(r"--port (\d+)", out).group(1))
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    with socket.socket() as sock:  # nothing listens (connections closed by the server may be in TIME_WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    assert "total" in out[out.index("Time per step:") :]
    assert (workdir / MARKER).is_file()


def test_without_weights_the_pretrained_model_is_skipped_with_a_clear_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import catdog.model

    monkeypatch.delenv(PRETRAINED_ENV, raising=False)
    # This machine has no timm/HF cache of the weights; make that explicit whatever the machine.
    monkeypatch.setattr(catdog.model, "hub_cached_weights", lambda name: None)
    weights, source = find_pretrained_weights(None, MODEL)
    assert (weights, source) == (None, "")
    models = plan_models(Path("configs"), weights, source, MODEL)
    assert list(models) == ["scratch"]
    note = capsys.readouterr().out
    assert "cannot find pretrained weights" in note and "SKIPPED" in note and "--pretrained-file" in note


def test_configured_weights_are_used_and_a_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    monkeypatch.setenv(PRETRAINED_ENV, str(weights))
    assert find_pretrained_weights(None, MODEL) == (weights, f"${PRETRAINED_ENV}")
    models = plan_models(Path("configs"), weights, "--pretrained-file", MODEL)
    assert models["pretrained"][-2:] == ["--model.pretrained_file", str(weights)]
    missing = tmp_path / "nope.pth"
    with pytest.raises(CatDogError, match=f"--pretrained-file {re.escape(str(missing))}: file not found"):
        find_pretrained_weights(missing, MODEL)


def test_workdir_it_did_not_make_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert catdog(["demo", "--workdir", str(precious)]) == 2
    assert "not made by `catdog demo`" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_rerun_clears_its_own_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-run"
    prepare_workdir(workdir)
    (workdir / "runs" / "old").mkdir(parents=True)
    (workdir / "results.md").write_text("old")
    prepare_workdir(workdir)
    assert sorted(p.name for p in workdir.iterdir()) == [MARKER]


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    server = Server({"broken": str(tmp_path / "missing.onnx")}, 8123, tmp_path / "serve.log")
    server.start()
    try:
        with pytest.raises(CatDogError, match="catdog serve exited with status 2 before it was ready") as info:
            server.wait_ready(timeout=60)
        assert "missing.onnx" in str(info.value)
    finally:
        server.stop()
