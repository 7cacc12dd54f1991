"""``catdog export --quantize int8``: a calibrated int8 model beside the fp32 one, evaluated and servable."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from train_helpers import save_checkpoint

from catdog import CatDogError, cli
from catdog.data.splits import labelled_images, relative_name
from catdog.data.transforms import preprocess

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

SMALL_MODEL = "tf_mobilenetv3_small_minimal_100"
IMAGE_SIZE = 48
CALIBRATION = 24


def _save_checkpoint(path: Path) -> None:
    """A Lightning checkpoint with non-trivial batch-norm statistics and a small non-zero head."""
    from catdog.export.onnx import as_if_trained
    from catdog.training.module import CatDogClassifier

    torch.manual_seed(0)
    model = CatDogClassifier(model_name=SMALL_MODEL, image_size=IMAGE_SIZE)
    as_if_trained(model.network, head_std=0.02)  # P(dog) away from 0 and 1, so differences show
    save_checkpoint(model, path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, fused_dataset: Path) -> dict[str, object]:
    """``catdog export --quantize int8`` run once: the fp32 and int8 files and what the command printed."""
    root = tmp_path_factory.mktemp("quantize")
    ckpt = root / "runs" / "small" / "checkpoints" / "best.ckpt"
    _save_checkpoint(ckpt)
    out_dir = root / "models"
    argv = ["export", "--ckpt", str(ckpt), "--out-dir", str(out_dir), "--quantize", "int8"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main([*argv, "--data-dir", str(fused_dataset), "--calibration-images", str(CALIBRATION)])
    assert code == 0
    return {"fp32": out_dir / "small.onnx", "int8": out_dir / "small.int8.onnx", "printed": printed.getvalue()}


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _p_dog(model: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": images})
    logits = logits.astype(np.float64)
    return 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax of two logits, written out


def test_int8_file_beside_the_fp32_one_with_its_metadata(exported: dict) -> None:
    from catdog.utils import file_sha256

    fp32, int8 = exported["fp32"], exported["int8"]
    assert sorted(p.name for p in fp32.parent.iterdir()) == ["small.int8-eval", "small.int8.onnx", "small.onnx"]
    fp32_meta, int8_meta = _meta(fp32), _meta(int8)
    assert {k: int8_meta[k] for k in fp32_meta} == fp32_meta  # the same preprocessing, classes, names
    assert int8_meta["precision"] == "int8"
    assert int8_meta["quantized_from_sha256"] == file_sha256(fp32)
    settings = json.loads(int8_meta["quantization"])
    assert settings["calibration_images"] == CALIBRATION and settings["calibration_split"] == "train"
    assert settings["per_channel"] is True and settings["activation_type"] == "QUInt8"

    model = onnx.load(str(int8))
    onnx.checker.check_model(model)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("DequantizeLinear") > 10 and "QuantizeLinear" in ops
    initializers = {t.name: t for t in model.graph.initializer}
    int8_weights = [t for t in initializers.values() if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) > 10  # the convolution weights are int8
    scales = [
        initializers[node.input[1]]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in {t.name for t in int8_weights}
    ]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)  # one scale per output channel
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size


def test_recorded_figures_equal_an_independent_evaluation(exported: dict, fused_dataset: Path) -> None:
    """Accuracies and agreement in the metadata, the printed line and predictions.csv, recomputed from scratch."""
    from catdog.metrics import read_predictions

    files, labels = labelled_images(fused_dataset / "test")
    labels = np.asarray(labels)
    images = np.stack([preprocess(path, _config(exported["fp32"])) for path in files])
    p_fp32, p_int8 = _p_dog(exported["fp32"], images), _p_dog(exported["int8"], images)
    accuracy = {"fp32": np.mean((p_fp32 > 0.5) == labels), "int8": np.mean((p_int8 > 0.5) == labels)}
    agreement = np.mean((p_fp32 > 0.5) == (p_int8 > 0.5))

    meta = _meta(exported["int8"])
    assert int(meta["eval_images"]) == len(files)
    assert float(meta["fp32_accuracy"]) == pytest.approx(accuracy["fp32"], abs=1e-12)
    assert float(meta["int8_accuracy"]) == pytest.approx(accuracy["int8"], abs=1e-12)
    assert float(meta["int8_fp32_agreement"]) == pytest.approx(agreement, abs=1e-12)
    assert float(meta["int8_fp32_max_abs_p_dog_diff"]) == pytest.approx(np.abs(p_fp32 - p_int8).max(), abs=1e-9)
    printed = exported["printed"]
    assert f"fp32 {accuracy['fp32']:.4f}, int8 {accuracy['int8']:.4f}" in printed
    assert f"agreement {agreement:.4f} on {len(files)} images" in printed

    eval_dir = exported["int8"].with_name("small.int8-eval")
    for name, expected in [("fp32", p_fp32), ("int8", p_int8)]:
        saved = read_predictions(eval_dir / name / "predictions.csv")
        assert saved.files == [relative_name(path, fused_dataset) for path in files]  # each row is its image's
        np.testing.assert_array_equal(saved.labels, labels)
        np.testing.assert_allclose(saved.p_dog, expected, rtol=0, atol=1e-9)

    assert np.ptp(p_fp32) > 1e-3  # the model's answers depend on the image
    assert not np.array_equal(p_fp32, p_int8)  # the int8 model really computes differently
    assert np.abs(p_fp32 - p_int8).max() < 0.05 and agreement >= 0.9  # ... and closely


def _config(model: Path):
    from catdog.data.transforms import PreprocessConfig

    return PreprocessConfig.from_metadata(_meta(model))


def test_the_server_serves_the_int8_model_like_any_other(exported: dict, fused_dataset: Path) -> None:
    from catdog.export.runtime import create_session, softmax
    from catdog.metrics import read_predictions
    from catdog.serving.models import load_model_info

    served = load_model_info("small-int8", exported["int8"])
    assert served.config == load_model_info("small", exported["fp32"]).config
    saved = read_predictions(exported["int8"].with_name("small.int8-eval") / "int8" / "predictions.csv")
    session = create_session(served.path, threads=1)
    for name, p_dog in list(zip(saved.files, saved.p_dog, strict=True))[:3]:
        image = preprocess((fused_dataset / name).read_bytes(), served.config)[None]
        (logits,) = session.run(None, {served.input_name: image})
        assert softmax(logits)[0, 1] == pytest.approx(p_dog, abs=1e-9)


def test_catdog_serve_answers_with_the_int8_model_over_http(
    exported: dict, fused_dataset: Path, no_torch_path: str, tmp_path: Path
) -> None:
    """Both files served at once: each endpoint answers what its own evaluation recorded for the same image."""
    import requests
    from serve_helpers import ATOL, post, served

    from catdog.metrics import read_predictions

    eval_dir = exported["int8"].with_name("small.int8-eval")
    recorded = {name: read_predictions(eval_dir / name / "predictions.csv") for name in ("fp32", "int8")}
    assert recorded["fp32"].files == recorded["int8"].files
    gaps = np.abs(recorded["fp32"].p_dog - recorded["int8"].p_dog)
    chosen = np.argsort(gaps)[-4:]  # where int8 and fp32 differ most, so the served answers tell them apart
    assert gaps[chosen].min() > 10 * ATOL
    models = {"small": exported["fp32"], "small-int8": exported["int8"]}
    with served(
        [f"--model={name}={path}" for name, path in models.items()], tmp_path / "serve.log", no_torch_path
    ) as server:
        health = requests.get(f"{server.url}/health", timeout=30).json()
        assert health["models"]["small-int8"]["endpoint"] == "/predict/small-int8"
        for index in chosen:
            image = (fused_dataset / recorded["int8"].files[index]).read_bytes()
            for name, precision in (("small", "fp32"), ("small-int8", "int8")):
                response = post(server, name, image)
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["model"] == name and list(body["probabilities"]) == ["Cat", "Dog"]
                expected = recorded[precision].p_dog[index]
                assert body["probabilities"]["Dog"] == pytest.approx(expected, abs=ATOL), (name, index)
                assert body["label"] == ("Dog" if body["probabilities"]["Dog"] > 0.5 else "Cat")


def test_calibration_images_come_from_the_train_split_class_balanced(fused_dataset: Path) -> None:
    from catdog.export.quantize import calibration_files

    train, train_labels = labelled_images(fused_dataset / "train")
    label_of = dict(zip(train, train_labels, strict=True))
    chosen = calibration_files(fused_dataset, 20, seed=0)
    assert len(chosen) == 20 and set(chosen) <= set(train)
    dog_share = np.mean([label_of[path] for path in chosen])
    assert dog_share == pytest.approx(np.mean(train_labels), abs=0.06)
    assert calibration_files(fused_dataset, 20, seed=0) == chosen
    assert calibration_files(fused_dataset, 20, seed=1) != chosen
    assert calibration_files(fused_dataset, 10_000, seed=0) == train


def test_quantize_mistakes_are_clear_errors(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], fused_dataset: Path
) -> None:
    from catdog.export.quantize import QuantizeSettings, quantize_onnx

    argv = ["export", "--ckpt", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "x.onnx"), "--quantize", "int8"]
    assert cli.main(argv) == 2
    assert "--quantize int8 needs --data-dir" in capsys.readouterr().err
    assert cli.main([*argv, "--data-dir", str(tmp_path)]) == 2
    assert "no train/ folder" in capsys.readouterr().err
    with pytest.raises(CatDogError, match="already an int8 model"):
        quantize_onnx(exported["int8"], fused_dataset, tmp_path / "again.onnx")
    with pytest.raises(CatDogError, match="file not found"):
        quantize_onnx(tmp_path / "missing.onnx", fused_dataset)
    with pytest.raises(CatDogError, match="activation_type"):
        QuantizeSettings(activation_type="QInt4")


def test_export_warns_when_int8_loses_more_than_half_a_point(tmp_path: Path) -> None:
    from catdog.export.quantize import MAX_ACCURACY_LOSS_POINTS, QuantizeResult, summary

    def result(fp32: float, int8: float) -> QuantizeResult:
        return QuantizeResult(tmp_path / "m.int8.onnx", 1, fp32, int8, 0.9, 200, 0.3, tmp_path / "m.int8-eval")

    line, warning = summary(tmp_path / "m.onnx", result(0.9, 0.9 - MAX_ACCURACY_LOSS_POINTS / 100))
    assert warning is None and "(-0.50 points)" in line
    _, warning = summary(tmp_path / "m.onnx", result(0.9, 0.89))
    assert warning is not None and "loses 1.00 points" in warning and "m.onnx instead" in warning
