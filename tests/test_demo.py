"""``catdog demo``: the whole pipeline at its smallest settings, and the demo's own safeguards."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from catdog import DISPLAY_NAMES, CatDogError
from catdog.cli import main as catdog
from catdog.demo import MARKER, PRETRAINED_ENV, Server, find_pretrained_weights, plan_models, prepare_workdir
from catdog.metrics import read_metrics

MODEL = "tf_efficientnetv2_b2"


def _onnx_answer(model: Path, image: Path) -> list[float]:
    """P(Cat), P(Dog) for ``image`` computed in-process from the ONNX file's own metadata (no server)."""
    import numpy as np
    import onnxruntime as ort

    from catdog.data.transforms import PreprocessConfig, preprocess

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    config = PreprocessConfig.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    logits = session.run(None, {session.get_inputs()[0].name: preprocess(image, config)[None]})[0][0]
    probs = np.exp(logits - logits.max())
    return (probs / probs.sum()).tolist()


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # The demo docs' faster form (32 px) with the default data sizes, whose training split leaves a last batch
    # of one image at batch 16; three epochs so that the scratch model has learned the generated data. No
    # weights file: the pretrained model is skipped (its planning is tested below; training it from a file is
    # covered by the compare and training tests).
    monkeypatch.delenv(PRETRAINED_ENV, raising=False)
    monkeypatch.setattr("catdog.training.network.hub_cached_weights", lambda name: None)
    workdir = tmp_path / "demo-run"
    assert catdog(["demo", "--workdir", str(workdir), "--image-size", "32", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    train_images = sum(1 for _ in (workdir / "dataset" / "train").rglob("*.jpg"))
    assert train_images > 200

    # Every step ran the real command, in order.
    commands = re.findall(r"^\$ catdog (\S+)", out, flags=re.MULTILINE)
    assert commands == ["sample-data", "fuse", "fit", "test", "calibrate", "export", "serve", "report"]
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            assert any((workdir / "dataset" / split / label).glob("*.jpg"))

    # The model trained, tested, exported.
    scratch = read_metrics(workdir / "runs" / "scratch" / "metrics.json")
    # epochs: those of the checkpoint under test (best.ckpt, the lowest validation loss of the three)
    best = torch.load(workdir / "runs" / "scratch" / "checkpoints" / "best.ckpt", weights_only=False)
    assert scratch.pretrained is False and scratch.epochs == best["epoch"] + 1 <= 3
    assert sum(map(sum, scratch.confusion_matrix)) > 0
    assert (workdir / "models" / "scratch.onnx").stat().st_size > 1_000_000
    # calibrated on its validation predictions when they allow a fit, and the file says which
    calibrated = (workdir / "runs" / "scratch" / "calibration.json").is_file()
    assert calibrated or "scratch: left uncalibrated: " in out
    from catdog.export.onnx import read_onnx_metadata

    meta = read_onnx_metadata(workdir / "models" / "scratch.onnx")
    assert (meta["calibration"] != "none") == calibrated

    # One cat and one dog sent to each endpoint, every answer well formed.
    answers = [json.loads(body) for body in re.findall(r"^  200 (\{.*\})$", out, flags=re.MULTILINE)]
    assert sorted(a["model"] for a in answers) == ["scratch", "scratch"]
    for answer in answers:
        assert answer["label"] in DISPLAY_NAMES
        assert answer["class_id"] == DISPLAY_NAMES.index(answer["label"])
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # Each served answer is the ONNX file's own answer for that image, and the scratch model is right.
    posted = re.findall(r"^\$ curl -F file=@(\S+) \S+/predict/(\S+)$", out, flags=re.MULTILINE)
    assert len(posted) == len(answers) == 2
    for (image, model), answer in zip(posted, answers, strict=True):
        assert answer["model"] == model
        expected = _onnx_answer(workdir / "models" / f"{model}.onnx", Path(image))
        assert [answer["probabilities"][name] for name in DISPLAY_NAMES] == pytest.approx(expected, abs=1e-4)
        if model == "scratch":
            assert answer["label"].lower() == Path(image).stem, f"scratch called the {Path(image).stem} a {answer}"
    for truth in ("cat", "dog"):
        with Image.open(workdir / "requests" / f"{truth}.jpg") as image:
            assert image.format == "JPEG" and image.height == 32
    table = out[out.index("Answers from catdog serve:") :]
    assert len(re.findall(r"^  scratch +(cat|dog) +(Cat|Dog) ", table, flags=re.MULTILINE)) == 2

    # The results table has both runs; plots are next to it.
    results = (workdir / "results.md").read_text()
    assert "| scratch " in results
    assert (workdir / "results-accuracy.png").is_file()
    assert len(list(workdir.glob("results-confusion-*.png"))) == 1

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
    import catdog.training.network

    monkeypatch.delenv(PRETRAINED_ENV, raising=False)
    # This machine has no timm/HF cache of the weights; make that explicit whatever the machine.
    monkeypatch.setattr(catdog.training.network, "hub_cached_weights", lambda name: None)
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
    # pretrained.yaml is an overlay: it always comes after scratch.yaml
    assert models["pretrained"][:4] == [
        "-c",
        str(Path("configs/scratch.yaml")),
        "-c",
        str(Path("configs/pretrained.yaml")),
    ]
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
