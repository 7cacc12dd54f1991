"""Calibration: the metrics against independent references, the fits against brute force and other solvers,
the map in the ONNX graph, and what ``catdog calibrate``, ``catdog export`` and ``catdog report`` do with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from catdog import CatDogError, cli
from catdog.calibration import (
    CALIBRATION_FILENAME,
    MIN_IMAGES,
    calibrate_run,
    fit_platt,
    fit_temperature,
    logit,
    read_calibration,
    sigmoid,
)
from catdog.data.transforms import PreprocessConfig
from catdog.metrics import (
    VAL_PREDICTIONS_FILENAME,
    brier_score,
    expected_calibration_error,
    log_loss,
    read_predictions,
    run_metrics_from_predictions,
    write_metrics,
    write_predictions,
)


def _model_outputs(n: int, seed: int, overconfidence: float = 1.0, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, P(dog)) of a model whose true dog logit is ``z`` (labels drawn from sigmoid(z)) but which
    answers ``sigmoid(overconfidence * z + shift)``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < sigmoid(z)).astype(np.int64)
    return labels, sigmoid(overconfidence * z + shift)


def _nll(labels: np.ndarray, z: np.ndarray, scale: float, offset: float = 0.0) -> float:
    """Mean log loss of ``sigmoid(scale * z + offset)``, written out independently of the package."""
    margin = np.where(labels == 1, 1.0, -1.0) * (scale * z + offset)
    return float(np.mean(np.logaddexp(0.0, -margin)))


# -- metrics --------------------------------------------------------------------------------------


def test_log_loss_and_brier_score_against_references() -> None:
    labels, p_dog = _model_outputs(200, seed=1, overconfidence=3.0)
    p_dog[:3] = [0.0, 1.0, 0.5]  # the clipped ends too
    try:
        from sklearn.metrics import brier_score_loss
        from sklearn.metrics import log_loss as sk_log_loss
    except ImportError:  # by hand, one image at a time
        eps = 1e-15
        clipped = [min(max(p, eps), 1 - eps) for p in p_dog]
        expected_nll = -sum(math.log(p if y == 1 else 1 - p) for y, p in zip(labels, clipped, strict=True)) / 200
        expected_brier = sum((p - y) ** 2 for y, p in zip(labels, p_dog, strict=True)) / 200
    else:
        expected_nll = sk_log_loss(labels, p_dog, labels=[0, 1])
        expected_brier = brier_score_loss(labels, p_dog)
    assert log_loss(labels, p_dog) == pytest.approx(expected_nll, rel=1e-9)
    assert brier_score(labels, p_dog) == pytest.approx(expected_brier, rel=1e-12)


# -- the fits -------------------------------------------------------------------------------------


def test_temperature_is_the_minimum_of_a_brute_force_search() -> None:
    labels, p_dog = _model_outputs(400, seed=2, overconfidence=2.5)
    z = logit(p_dog)
    fitted = fit_temperature(labels, z).temperature
    grid = np.geomspace(0.1, 20.0, 40001)  # steps of 0.013 %
    losses = [_nll(labels, z, 1.0 / t) for t in grid]
    best = grid[int(np.argmin(losses))]
    assert fitted == pytest.approx(best, rel=5e-4)
    assert _nll(labels, z, 1.0 / fitted) <= min(losses) + 1e-12


def test_platt_parameters_match_an_independent_logistic_regression() -> None:
    labels, p_dog = _model_outputs(500, seed=3, overconfidence=0.6, shift=-1.5)
    z = logit(p_dog)
    fitted = fit_platt(labels, z)
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        optimize = pytest.importorskip("scipy.optimize")
        result = optimize.minimize(lambda q: _nll(labels, z, q[0], q[1]), [1.0, 0.0], method="Nelder-Mead",
                                   options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000})  # fmt: skip
        expected = result.x
    else:
        regression = LogisticRegression(C=1e10, tol=1e-12, max_iter=10000).fit(z[:, None], labels)
        expected = [regression.coef_[0, 0], regression.intercept_[0]]
    # the true model is sigmoid(z): scale 1/0.6, offset 1.5/0.6, up to the sample's noise
    assert [fitted.scale, fitted.offset] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert fitted.scale == pytest.approx(1 / 0.6, rel=0.2) and fitted.offset == pytest.approx(2.5, rel=0.2)


def test_an_overconfident_model_gets_its_temperature_back_and_loses_its_ece() -> None:
    labels, p_dog = _model_outputs(20000, seed=4, overconfidence=5.0)  # logits x5 of a calibrated model
    cmap = fit_temperature(labels, logit(p_dog))
    assert cmap.temperature == pytest.approx(5.0, rel=0.05)
    calibrated = cmap.apply(p_dog)
    before, after = expected_calibration_error(labels, p_dog), expected_calibration_error(labels, calibrated)
    assert before > 0.1 and after < 0.02
    assert log_loss(labels, calibrated) < log_loss(labels, p_dog)
    assert np.array_equal(calibrated > 0.5, p_dog > 0.5)  # a temperature changes no decision


def test_platt_moves_a_threshold_that_was_off() -> None:
    labels, p_dog = _model_outputs(2000, seed=5, shift=-3.0)  # ranks well, calls most dogs Cat
    cmap = fit_platt(labels, logit(p_dog))
    before = np.mean((p_dog > 0.5) == labels)
    after = np.mean((cmap.apply(p_dog) > 0.5) == labels)
    assert cmap.offset == pytest.approx(3.0, abs=0.3) and after > before + 0.1


# -- catdog calibrate -----------------------------------------------------------------------------


def _run_folder(root: Path, n_val: int = 120, seed: int = 6, overconfidence: float = 4.0) -> Path:
    """A run folder as a trainer leaves it: val_predictions.csv, predictions.csv, metrics.json."""
    run = root / "runs" / "scratch"
    for filename, count, offset in ((VAL_PREDICTIONS_FILENAME, n_val, 0), ("predictions.csv", 80, 1000)):
        labels, p_dog = _model_outputs(count, seed=seed + offset, overconfidence=overconfidence)
        files = [f"{'train' if offset == 0 else 'test'}/{('cat', 'dog')[y]}/{i}.jpg" for i, y in enumerate(labels)]
        write_predictions(files, labels, p_dog, run, filename)
    metrics = run_metrics_from_predictions(
        run / "predictions.csv", model="m", framework="lightning", pretrained=False, num_params=1, epochs=1,
        train_seconds=1.0,
    )  # fmt: skip
    write_metrics(metrics, run)
    return run


def test_calibrate_writes_calibration_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from catdog.utils import file_sha256

    run = _run_folder(tmp_path)
    assert cli.main(["calibrate", str(run)]) == 0
    assert "temperature" in capsys.readouterr().out
    data = json.loads((run / CALIBRATION_FILENAME).read_text())
    val = read_predictions(run / VAL_PREDICTIONS_FILENAME)
    assert data["method"] == "temperature" and data["n_images"] == 120
    assert data["n_cats"] + data["n_dogs"] == 120 and data["n_dogs"] == int(val.labels.sum())
    assert data["fitted_on"] == VAL_PREDICTIONS_FILENAME
    assert data["fitted_on_sha256"] == file_sha256(run / VAL_PREDICTIONS_FILENAME)
    expected = fit_temperature(val.labels, logit(val.p_dog)).temperature
    assert data["parameters"]["temperature"] == pytest.approx(expected, rel=1e-12)
    assert data["val_before"]["nll"] == pytest.approx(log_loss(val.labels, val.p_dog), rel=1e-12)
    assert data["val_after"]["nll"] < data["val_before"]["nll"]
    assert data["val_after"]["ece"] < data["val_before"]["ece"]
    assert data["val_after"]["accuracy"] == data["val_before"]["accuracy"]
    assert cli.main(["calibrate", str(run), "--method", "platt"]) == 0
    platt = read_calibration(run / CALIBRATION_FILENAME)
    assert platt.method == "platt" and set(platt.parameters) == {"scale", "offset"}


def test_calibration_never_reads_the_test_split(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    reference = calibrate_run(run)
    (run / "predictions.csv").write_text("not,a,predictions file\n")  # would fail if it were read
    assert calibrate_run(run) == reference
    (run / "predictions.csv").unlink()  # the test predictions gone altogether
    assert calibrate_run(run) == reference


def test_too_few_validation_images_are_refused_with_the_number(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, n_val=MIN_IMAGES - 1)
    (run / CALIBRATION_FILENAME).write_text("{}")  # an older map must not survive a refused fit
    with pytest.raises(CatDogError, match=rf"only {MIN_IMAGES - 1} validation images .* at least {MIN_IMAGES}"):
        calibrate_run(run)
    assert not (run / CALIBRATION_FILENAME).exists()
    assert cli.main(["calibrate", str(run)]) == 2
    assert cli.main(["calibrate", str(run), "--skip-unfit"]) == 0


def test_a_run_without_validation_predictions_says_how_to_get_them(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    (run / VAL_PREDICTIONS_FILENAME).unlink()
    with pytest.raises(CatDogError, match="no val_predictions.csv.*rerun the test"):
        calibrate_run(run)


def test_report_shows_each_run_before_and_after(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    calibration = calibrate_run(run)
    out = tmp_path / "results.md"
    assert cli.main(["report", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    section = out.read_text().split("## Calibration", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("| run"))
    row = next(line for line in section.splitlines() if line.startswith("| scratch"))
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                     [c.strip() for c in row.strip("|").split("|")], strict=True))  # fmt: skip
    test = read_predictions(run / "predictions.csv")
    after = calibration.map.apply(test.p_dog)
    assert float(cells["ECE"]) == pytest.approx(expected_calibration_error(test.labels, test.p_dog), abs=5e-5)
    assert float(cells["NLL calibrated"]) == pytest.approx(log_loss(test.labels, after), abs=5e-5)
    assert float(cells["Brier calibrated"]) == pytest.approx(brier_score(test.labels, after), abs=5e-5)
    assert cells["accuracy calibrated"] == cells["accuracy"]  # temperature
    assert float(cells["NLL calibrated"]) < float(cells["NLL"])
    assert "temperature" in cells["calibration"]


# -- the map in the ONNX file ---------------------------------------------------------------------


torch = pytest.importorskip("torch")


class _Tiny(torch.nn.Module):
    """Two logits from a 16 px image: a convolution, a mean and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3))) * 8.0


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_onnx_outputs_are_the_calibrated_torch_probabilities(tmp_path: Path, method: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    from catdog.export.onnx import export_onnx, read_onnx_metadata

    run = _run_folder(tmp_path)
    calibration = calibrate_run(run, method)
    torch.manual_seed(0)
    network = _Tiny().eval()
    result = export_onnx(network, PreprocessConfig(image_size=16), tmp_path / "m.onnx", "tiny", calibration=calibration)
    images = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p_torch = network(images).double().softmax(dim=1)[:, 1].numpy()
    expected = calibration.map.apply(p_torch)  # the map on the probabilities, as catdog calibrate scored it
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": images.numpy()})
    served = torch.from_numpy(logits).double().softmax(dim=1)[:, 1].numpy()
    np.testing.assert_allclose(served, expected, atol=2e-6, rtol=0)
    assert not np.allclose(served, p_torch, atol=1e-2)  # the map did something
    meta = read_onnx_metadata(result.path)
    recorded = json.loads(meta["calibration"])
    assert recorded["method"] == method and recorded["parameters"] == calibration.parameters
    assert recorded["fitted_on_sha256"] == calibration.fitted_on_sha256
    assert "calibrated" in meta["output"]


def test_export_uses_the_runs_map_and_refuses_another_checkpoints(tmp_path: Path) -> None:
    from catdog.export.onnx import find_calibration

    run = _run_folder(tmp_path)
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "checkpoint": str(ckpt.resolve())}))
    calibration = calibrate_run(run)
    assert find_calibration(ckpt) == calibration
    ckpt.write_bytes(b"retrained weights")
    with pytest.raises(CatDogError, match="another checkpoint.*--uncalibrated"):
        find_calibration(ckpt)
    (run / CALIBRATION_FILENAME).unlink()
    assert find_calibration(ckpt) is None


def test_served_model_says_whether_it_is_calibrated(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from catdog.export.onnx import export_onnx
    from catdog.serving.models import load_model_info

    calibration = calibrate_run(_run_folder(tmp_path), "platt")
    network = _Tiny().eval()
    config = PreprocessConfig(image_size=16)
    export_onnx(network, config, tmp_path / "plain.onnx", "tiny")
    export_onnx(network, config, tmp_path / "calibrated.onnx", "tiny", calibration=calibration)
    plain, calibrated = (
        load_model_info("plain", tmp_path / "plain.onnx"),
        load_model_info("cal", tmp_path / "calibrated.onnx"),
    )
    assert plain.describe()["calibrated"] is False and plain.calibration_method == "none"
    assert calibrated.describe()["calibrated"] is True and calibrated.calibration_method == "platt"
    assert calibrated.describe()["calibration"]["parameters"] == calibration.parameters
