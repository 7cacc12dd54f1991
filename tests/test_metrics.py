"""The metrics.json schema every trainer writes and the report reads."""

from __future__ import annotations

import json

import pytest

from catdog import CatDogError
from catdog.metrics import RunMetrics, binary_confusion_matrix, read_metrics, write_metrics


def _metrics(**overrides) -> RunMetrics:
    values = dict(model="tf_efficientnetv2_b2", framework="lightning", pretrained=True, accuracy=0.75, f1=0.7,
                  auroc=0.8, confusion_matrix=[[3, 1], [1, 3]], num_params=123, epochs=2, train_seconds=1.5,
                  checkpoint="runs/x/best.ckpt")  # fmt: skip
    values.update(overrides)
    return RunMetrics(**values)


def test_round_trip(tmp_path) -> None:
    path = write_metrics(_metrics(), tmp_path / "run")
    assert path.name == "metrics.json"
    assert read_metrics(path) == _metrics()
    assert set(json.loads(path.read_text())) == {
        "model", "framework", "pretrained", "accuracy", "f1", "auroc", "confusion_matrix", "num_params",
        "epochs", "train_seconds", "checkpoint",
    }  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(framework="sklearn"), "framework"),
        (dict(accuracy=1.5), "accuracy"),
        (dict(confusion_matrix=[[1, 2, 3]]), "confusion_matrix"),
        (dict(epochs=-1), "epochs"),
    ],
)
def test_invalid_values_are_refused(change, message) -> None:
    with pytest.raises(CatDogError, match=message):
        _metrics(**change)


def test_malformed_files_are_named(tmp_path) -> None:
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(CatDogError, match=str(bad)):
        read_metrics(bad)
    bad.write_text(json.dumps({"model": "x"}))
    with pytest.raises(CatDogError, match="missing field"):
        read_metrics(bad)


def test_binary_confusion_matrix() -> None:
    assert binary_confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]) == [[1, 1], [1, 2]]
