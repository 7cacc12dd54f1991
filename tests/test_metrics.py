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
        "epochs", "train_seconds", "checkpoint", "balanced_accuracy", "ece", "n_test", "predictions",
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


# -- metrics from saved predictions, checked against torchmetrics -----------------------------------


def _random_predictions(seed: int, n: int = 301, ties: bool = False):
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p_dog = np.clip(rng.normal(0.35 + 0.3 * labels, 0.25), 0.001, 0.999)
    if ties:
        p_dog = np.round(p_dog, 1)  # many equal scores: AUROC must average their ranks
    return labels, p_dog


@pytest.mark.parametrize("ties", [False, True])
def test_score_matches_torchmetrics(ties: bool) -> None:
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.classification")
    from catdog.metrics import score

    for seed in range(5):
        labels, p_dog = _random_predictions(seed, ties=ties)
        scores = score(labels, p_dog)
        preds, target = torch.tensor(p_dog, dtype=torch.float64), torch.tensor(labels)
        assert scores.accuracy == pytest.approx(tm.binary_accuracy(preds, target).item(), abs=1e-6)
        assert scores.f1 == pytest.approx(tm.binary_f1_score(preds, target).item(), abs=1e-6)
        assert scores.auroc == pytest.approx(tm.binary_auroc(preds, target).item(), abs=1e-6)
        two_class = torch.stack([1 - preds, preds], dim=1)
        balanced = tm.multiclass_recall(two_class, target, num_classes=2, average="macro").item()
        assert scores.balanced_accuracy == pytest.approx(balanced, abs=1e-6)
        if not ties:  # scores on bin edges fall on either side depending on float precision
            ece = tm.multiclass_calibration_error(two_class.float(), target, num_classes=2, n_bins=10).item()
            assert scores.ece == pytest.approx(ece, abs=1e-5)
        matrix = tm.binary_confusion_matrix(preds, target).tolist()
        assert scores.confusion_matrix == matrix
        assert sum(map(sum, scores.confusion_matrix)) == scores.n == len(labels)


def test_auroc_brute_force_and_edge_cases() -> None:
    import itertools

    from catdog.metrics import binary_auroc

    labels = [0, 1, 1, 0, 1, 0, 0, 1]
    scores = [0.1, 0.9, 0.4, 0.4, 0.4, 0.8, 0.2, 0.7]
    pairs = [
        (s1, s0)
        for (l1, s1), (l0, s0) in itertools.product(zip(labels, scores, strict=True), repeat=2)
        if l1 == 1 and l0 == 0
    ]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert binary_auroc(labels, scores) == pytest.approx(expected)
    assert binary_auroc([1, 1], [0.2, 0.3]) is None  # one class: undefined, not a made-up number


def test_threshold_ties_go_to_cat() -> None:
    from catdog.metrics import score

    scores = score([0, 1], [0.5, 0.5000001])
    assert scores.confusion_matrix == [[1, 0], [0, 1]]


def test_collapse_warning_signature() -> None:
    from catdog.metrics import score

    labels = [0] * 40 + [1] * 60
    ranked_but_all_cat = [0.01 + 0.001 * i for i in range(100)]  # perfect ranking, every P(dog) < 0.5
    collapsed = score(labels, ranked_but_all_cat)
    assert collapsed.auroc == 1.0 and collapsed.accuracy == 0.4
    assert "majority-class share" in (collapsed.collapse_warning() or "")
    healthy = score(labels, [0.2] * 40 + [0.8] * 60)
    assert healthy.collapse_warning() is None and healthy.collapse_warning(0) is None


def test_collapse_warning_names_what_the_model_has() -> None:
    """A model without BatchNorm (Keras' custom_cnn) is not told its BatchNorm statistics are stale."""
    from catdog.metrics import score

    collapsed = score([0] * 40 + [1] * 60, [0.01 + 0.001 * i for i in range(100)])
    without, with_bn, unknown = (collapsed.collapse_warning(n) or "" for n in (0, 12, None))
    assert "no BatchNorm layers" in without and "running statistics" not in without and "output bias" in without
    assert "12 BatchNorm layer(s)" in with_bn and "running statistics" in with_bn and "output bias" not in with_bn
    assert "where the model has BatchNorm layers" in unknown and "output bias" in unknown


def test_predictions_round_trip_full_precision(tmp_path) -> None:
    from catdog.metrics import read_predictions, run_metrics_from_predictions, score, write_predictions

    labels, p_dog = _random_predictions(7, n=50)
    p_dog[0] = 0.5000000000001  # would flip to "cat" if written with 6 decimals
    files = [f"test/{'dog' if y else 'cat'}/{i}.jpg" for i, y in enumerate(labels)]
    path = write_predictions(files, labels.tolist(), p_dog.tolist(), tmp_path / "run")
    back = read_predictions(path)
    assert back.files == files and back.labels.tolist() == labels.tolist()
    assert back.p_dog.tolist() == p_dog.tolist()
    metrics = run_metrics_from_predictions(
        path, model="m", framework="keras", pretrained=False, num_params=1, epochs=1, train_seconds=0.0
    )
    expected = score(labels, p_dog)
    assert (metrics.accuracy, metrics.auroc, metrics.ece, metrics.n_test) == (
        expected.accuracy, expected.auroc, expected.ece, 50
    )  # fmt: skip
    written = write_metrics(metrics, tmp_path / "run")
    assert read_metrics(written) == metrics


def test_malformed_predictions_name_the_line(tmp_path) -> None:
    from catdog.metrics import read_predictions

    bad = tmp_path / "predictions.csv"
    bad.write_text("file,label,p_dog\na.jpg,1,0.3\nb.jpg,dog,0.4\n")
    with pytest.raises(CatDogError, match="line 3"):
        read_predictions(bad)
    bad.write_text("path,label,p\n")
    with pytest.raises(CatDogError, match="header"):
        read_predictions(bad)
