"""keras_baselines: the four Keras models train, evaluate and report in the shared metrics schema.

Everything runs at 32 px for one or two single-step epochs, eagerly (no graph compilation), on a small
copy of the fused test dataset. The BatchNorm policy on small built models is in test_keras_batchnorm.py, the
backends and import rules in test_keras_backends.py.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "tensorflow"  # the default backend; the torch one runs in a subprocess
# Lightning before keras: typing caches Unions by set equality, so a ``Optional[Union[float, int]]`` that keras
# builds first becomes Lightning's ``limit_train_batches`` type, and the Trainer arguments of the other tests
# in this process (test_poutyne, test_train_cli) would parse ``--trainer.limit_train_batches 2`` as 2.0.
with contextlib.suppress(ImportError):  # the keras tests themselves do not need it
    import lightning.pytorch  # noqa: F401
keras = pytest.importorskip("keras", reason="keras_baselines needs the keras extra: pip install -e '.[keras]'")

from keras_helpers import SEED, SMOKE  # noqa: E402

from catdog import CLASSES, CatDogError  # noqa: E402
from catdog.data.splits import read_file_list, relative_name, split_train, write_file_list  # noqa: E402
from catdog.metrics import read_metrics, read_predictions  # noqa: E402
from keras_baselines import MODEL_NAMES  # noqa: E402
from keras_baselines.cli import main  # noqa: E402

pytestmark = pytest.mark.keras

SAVES_EVERY_EPOCH = {"effnetv2b2_scratch", "effnetv2b2_imagenet", "custom_cnn"}


def _count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix == ".jpg")


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """A no-top EfficientNetV2B2 weights file from a random base, and the weights it holds."""
    keras.utils.set_random_seed(123)
    base = keras.applications.EfficientNetV2B2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / "effnetv2b2_notop.weights.h5"
    base.save_weights(path)
    return path, base.get_weights()


@pytest.fixture(scope="module")
def all_runs(tiny_dataset: Path, base_weights: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train --model all``: the four models, two one-step epochs each; returns the parent run dir."""
    out = tmp_path_factory.mktemp("runs") / "keras"
    argv = ["train", "--model", "all", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "2"]
    assert main([*argv, "--weights", str(base_weights[0]), *SMOKE]) == 0
    return out


def _decode(path: Path, size: int) -> np.ndarray:
    """One image decoded and resized apart from the pipelines (TensorFlow ops, batch of one)."""
    import tensorflow as tf

    image = tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3)
    return tf.image.resize(image, (size, size), method="bilinear").numpy()


def _auroc_by_pairs(labels: list[int], p_dog: list[float]) -> float:
    """AUROC by counting every (dog, cat) pair: the ground truth for the rank formula."""
    dogs = [p for p, y in zip(p_dog, labels, strict=True) if y == 1]
    cats = [p for p, y in zip(p_dog, labels, strict=True) if y == 0]
    return sum((d > c) + 0.5 * (d == c) for d in dogs for c in cats) / (len(dogs) * len(cats))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_trains_and_writes_its_run(all_runs: Path, tiny_dataset: Path, name: str) -> None:
    run_dir = all_runs / name
    metrics = read_metrics(run_dir / "metrics.json")
    assert (metrics.model, metrics.framework, metrics.epochs) == (name, "keras", 2)
    assert metrics.pretrained is (name == "effnetv2b2_imagenet")
    assert metrics.num_params > 0 and metrics.train_seconds > 0
    assert metrics.checkpoint == str(run_dir / "checkpoints" / "best.keras")
    with open(run_dir / "history.csv", newline="") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [0, 1]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["backend"] == "tensorflow" and info["class_names"] == ["cat", "dog"]
    assert (info["train_images"], info["val_images"], info["test_images"]) == (16, 4, 8)
    saved = sorted(p.name for p in (run_dir / "epochs").glob("*.keras")) if (run_dir / "epochs").is_dir() else []
    assert saved == (["epoch_001.keras", "epoch_002.keras"] if name in SAVES_EVERY_EPOCH else [])
    assert not (run_dir / "skipped.json").exists()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_metrics_are_recomputed_from_the_predictions(all_runs: Path, tiny_dataset: Path, name: str) -> None:
    run_dir = all_runs / name
    with open(run_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    files = [r["file"] for r in rows]
    labels = [int(r["label"]) for r in rows]
    p_dog = [float(r["p_dog"]) for r in rows]
    # Every test image once, relative to the dataset root, labelled by its folder.
    assert sorted(files) == sorted(relative_name(p, tiny_dataset) for p in (tiny_dataset / "test").rglob("*.jpg"))
    assert labels == [CLASSES.index(Path(f).parent.name) for f in files]
    pairs = [(y, int(p > 0.5)) for y, p in zip(labels, p_dog, strict=True)]
    matrix = [[pairs.count((t, c)) for c in (0, 1)] for t in (0, 1)]
    metrics = read_metrics(run_dir / "metrics.json")
    assert metrics.predictions == "predictions.csv" and metrics.n_test == len(rows) == 8
    val = read_predictions(run_dir / "val_predictions.csv")  # the validation images, same best checkpoint
    assert sorted(val.files) == sorted((run_dir / "val_files.txt").read_text().split())
    assert val.labels.tolist() == [CLASSES.index(Path(f).parent.name) for f in val.files]
    assert metrics.confusion_matrix == matrix
    assert metrics.accuracy == pytest.approx(sum(y == q for y, q in pairs) / len(rows), abs=1e-12)
    recalls = [matrix[c][c] / sum(matrix[c]) for c in (0, 1)]
    assert metrics.balanced_accuracy == pytest.approx(sum(recalls) / 2, abs=1e-12)
    assert metrics.auroc == pytest.approx(_auroc_by_pairs(labels, p_dog), abs=1e-12)


def test_a_prediction_row_belongs_to_its_image(all_runs: Path, tiny_dataset: Path) -> None:
    run_dir = all_runs / "custom_cnn"
    model = keras.saving.load_model(run_dir / "checkpoints" / "best.keras")
    with open(run_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    saved = np.array([float(r["p_dog"]) for r in rows])
    # Each image alone, decoded apart from the pipeline (which caches uint8 pixels, hence the rounding).
    alone = [model.predict(_decode(tiny_dataset / r["file"], 32).round()[None], verbose=0)[0, 0] for r in rows]
    assert len(set(saved.round(5))) == len(rows)  # values 1e-5 apart or more, so a swapped row cannot pass
    np.testing.assert_allclose(saved, np.array(alone, dtype=np.float64), rtol=0, atol=1e-6)


def test_validation_files_are_the_shared_split(all_runs: Path, tiny_dataset: Path) -> None:
    expected = split_train(tiny_dataset, val_fraction=0.15, seed=SEED).val_names(tiny_dataset)
    for name in MODEL_NAMES:
        assert read_file_list(all_runs / name / "val_files.txt", tiny_dataset) == sorted(expected)


def test_pipelines_hold_exactly_the_listed_images(tiny_dataset: Path, tmp_path: Path) -> None:
    from keras_baselines.data import load_splits

    chosen = ["train/cat/" + p.name for p in sorted((tiny_dataset / "train" / "cat").glob("*.jpg"))[:3]]
    chosen += ["train/dog/" + p.name for p in sorted((tiny_dataset / "train" / "dog").glob("*.jpg"))[-2:]]
    listed = write_file_list(chosen, tmp_path / "val.txt")
    splits = load_splits(tiny_dataset, 32, batch_size=4, label_mode="categorical", augment=False, val_files=listed)
    assert splits.val_files == sorted(chosen)
    # The validation pipeline yields those images, in that order, with their labels.
    images = np.concatenate([x for x, _ in splits.val])
    labels = np.concatenate([y for _, y in splits.val]).argmax(axis=1)
    np.testing.assert_allclose(images, [_decode(tiny_dataset / f, 32).round() for f in splits.val_files], atol=1e-4)
    assert labels.tolist() == [0, 0, 0, 1, 1]
    # Training: the 15 other images, shuffled, in full batches only (15 = 3 x 4 + 3 dropped).
    batches = [(x, y) for x, y in splits.train]
    assert [len(x) for x, _ in batches] == [4, 4, 4]
    decoded = {f: _decode(tiny_dataset / f, 32).round() for f in splits.train_files}
    assert len(decoded) == 15 and not set(decoded) & set(chosen)
    train_images, train_labels = (np.concatenate([b[i] for b in batches]) for i in (0, 1))
    for image, label in zip(train_images, train_labels, strict=True):
        match = [f for f, d in decoded.items() if np.abs(d - image).max() < 1e-4]
        assert len(match) == 1 and CLASSES.index(Path(match[0]).parent.name) == int(label.argmax())
    assert splits.test_files == sorted(relative_name(p, tiny_dataset) for p in (tiny_dataset / "test").rglob("*.jpg"))


def test_val_files_option_reaches_the_run(tiny_dataset: Path, tmp_path: Path) -> None:
    chosen = ["train/cat/" + p.name for p in sorted((tiny_dataset / "train" / "cat").glob("*.jpg"))[-2:]]
    chosen += ["train/dog/" + p.name for p in sorted((tiny_dataset / "train" / "dog").glob("*.jpg"))[:2]]
    listed = write_file_list(chosen, tmp_path / "val.txt")
    out = tmp_path / "run"
    argv = ["train", "--model", "custom_cnn", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--val-files", str(listed), *SMOKE]) == 0
    assert read_file_list(out / "val_files.txt", tiny_dataset) == sorted(chosen)
    info = json.loads((out / "run.json").read_text())
    assert (info["train_images"], info["val_images"]) == (16, 4)


def test_best_is_the_lowest_val_loss_and_last_the_final_epoch(all_runs: Path, tiny_dataset: Path) -> None:
    from keras_baselines.data import load_splits

    run_dir = all_runs / "effnetv2b2_scratch"
    with open(run_dir / "history.csv", newline="") as handle:
        val_loss = [float(r["val_loss"]) for r in csv.DictReader(handle)]
    splits = load_splits(tiny_dataset, 32, batch_size=4, label_mode="categorical", seed=SEED, augment=False)
    images, labels = (np.concatenate([np.asarray(batch[i]) for batch in splits.val]) for i in (0, 1))
    for checkpoint, expected in (("best", min(val_loss)), ("last", val_loss[-1])):
        model = keras.saving.load_model(run_dir / "checkpoints" / f"{checkpoint}.keras")
        # The validation loss of the saved weights and BatchNorm statistics, recomputed eagerly.
        loss = np.mean(keras.losses.categorical_crossentropy(labels, model(images, training=False)))
        assert float(loss) == pytest.approx(expected, rel=1e-4), checkpoint


def test_bn_momentum_reaches_every_batchnorm_layer(all_runs: Path) -> None:
    from keras_baselines.models import build_model

    model = build_model("effnetv2b2_scratch", image_size=32, bn_momentum=0.3)
    base = model.get_layer("efficientnetv2-b2")
    nested = [layer for layer in base.layers if type(layer).__name__ == "BatchNormalization"]
    assert len(nested) > 50 and all(layer.momentum == pytest.approx(0.7) for layer in nested)
    # The default (torch 0.1, Keras 0.9) is what the trained checkpoint carries.
    saved = keras.saving.load_model(all_runs / "effnetv2b2_scratch" / "checkpoints" / "best.keras")
    momenta = [layer.momentum for layer in saved.get_layer("efficientnetv2-b2").layers if hasattr(layer, "momentum")]
    assert len(momenta) == len(nested) and all(m == pytest.approx(0.9) for m in momenta)
    with pytest.raises(CatDogError, match="--bn-momentum"):
        build_model("custom_cnn", image_size=32, bn_momentum=0.0)


@pytest.mark.parametrize("name", ["effnetv2b2_scratch", "effnetv2b2_imagenet"])
def test_saved_baselines_tell_their_batchnorm_values_per_image(all_runs: Path, name: str) -> None:
    """First and last layer: the stem's stride-2 conv leaves 16 x 16 of a 32 px image, the last stage 1 x 1
    (the models built in test_keras_batchnorm.py check every layer)."""
    from keras_baselines.callbacks import _values_per_channel
    from keras_baselines.models import batch_norm_layers

    model = keras.saving.load_model(all_runs / name / "checkpoints" / "best.keras")
    values = [_values_per_channel(layer) for layer in batch_norm_layers(model)]
    assert len(values) > 50
    assert (values[0], values[-1]) == (256, 1)
    assert values == sorted(values, reverse=True)  # the resolution only falls through the network


@pytest.mark.parametrize("name", ["custom_cnn", "vgg16"])
def test_the_custom_cnn_and_vgg16_have_no_batchnorm_layers(all_runs: Path, name: str) -> None:
    from keras_baselines.models import batch_norm_layers

    assert batch_norm_layers(keras.saving.load_model(all_runs / name / "checkpoints" / "best.keras")) == []


def test_a_short_run_learns_both_classes(fused_dataset: Path, tmp_path: Path, record_property) -> None:  # noqa: ANN001
    """custom_cnn, 32 px, 12 epochs of 8 batches on the generated data: both classes predicted and ranked.

    (Measured: balanced accuracy 0.96, AUROC 1.0 on the default AVX-512 kernels and with oneDNN limited to AVX2 on
    1 thread; without op determinism three runs scored 0.79, 0.85 and 0.83, so the floors are 0.7 and 0.85.
    The run is the same every time on one machine, see the next test.
    EfficientNetV2B2 needs minutes per epoch on a CPU, too slow for a test; its BatchNorm policy is tested on
    small networks above.)
    """
    out = tmp_path / "custom_cnn"
    argv = ["train", "--model", "custom_cnn", "--data", str(fused_dataset), "--out", str(out), "--image-size", "32"]
    assert main([*argv, "--epochs", "12", "--batch-size", "16", "--eager", "--quiet"]) == 0
    scores = read_predictions(out / "predictions.csv").score()
    record_property("figures", [scores.balanced_accuracy, scores.auroc, scores.confusion_matrix])
    (cat_cat, cat_dog), (dog_cat, dog_dog) = scores.confusion_matrix
    assert cat_cat > 0 and dog_dog > 0 and scores.collapse_warning() is None
    assert scores.balanced_accuracy >= 0.7 and scores.auroc >= 0.85, scores


def test_a_seed_gives_one_run(fused_dataset: Path, tmp_path: Path) -> None:
    """Twice the same seed in one process: the same predictions, to the bit (TensorFlow's op determinism;
    without it three such custom_cnn runs scored balanced accuracies 0.79, 0.85 and 0.83)."""
    runs = [tmp_path / "first", tmp_path / "second"]
    for out in runs:
        argv = ["train", "--model", "custom_cnn", "--data", str(fused_dataset), "--out", str(out)]
        assert main([*argv, "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--quiet"]) == 0
    first, second = (read_predictions(out / "predictions.csv") for out in runs)
    assert first.files == second.files and list(first.p_dog) == list(second.p_dog)


def test_evaluate_command_reproduces_the_predictions(all_runs: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    run_dir = all_runs / "vgg16"
    argv = ["evaluate", "--model-path", str(run_dir / "checkpoints" / "best.keras"), "--data", str(tiny_dataset)]
    assert main([*argv, "--out", str(tmp_path), "--batch-size", "3"]) == 0
    trained, evaluated = (read_predictions(d / "predictions.csv") for d in (run_dir, tmp_path))
    assert evaluated.files == trained.files
    np.testing.assert_allclose(evaluated.p_dog, trained.p_dog, rtol=0, atol=1e-6)
    metrics = read_metrics(tmp_path / "metrics.json")
    assert (metrics.model, metrics.epochs) == ("vgg16", 2)
    assert metrics.confusion_matrix == read_metrics(run_dir / "metrics.json").confusion_matrix


def test_model_all_skips_a_model_without_weights(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import keras_baselines.cli as cli

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))  # nothing cached
    monkeypatch.setattr(cli, "MODEL_NAMES", ("effnetv2b2_imagenet", "custom_cnn"))  # the cheap model only
    out = tmp_path / "runs"
    argv = ["train", "--model", "all", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1", "--offline"]
    assert main([*argv, *SMOKE]) == 0
    printed = capsys.readouterr().out
    reason = json.loads((out / "effnetv2b2_imagenet" / "skipped.json").read_text())["reason"]
    assert "--weights PATH" in reason and f"effnetv2b2_imagenet: skipped: {reason}" in printed
    assert not (out / "effnetv2b2_imagenet" / "metrics.json").exists()
    assert read_metrics(out / "custom_cnn" / "metrics.json").epochs == 1


def test_model_all_goes_on_after_a_failure_and_exits_non_zero(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import keras_baselines.cli as cli
    from keras_baselines import train as train_lib

    real_train = train_lib.train

    def failing(config):
        if config.model == "effnetv2b2_scratch":
            raise RuntimeError("out of memory")
        return real_train(config)

    monkeypatch.setattr(cli, "MODEL_NAMES", ("effnetv2b2_scratch", "custom_cnn"))
    monkeypatch.setattr(train_lib, "train", failing)
    out = tmp_path / "runs"
    argv = ["train", "--model", "all", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1"]
    assert main([*argv, *SMOKE]) == 1
    assert "effnetv2b2_scratch: failed: RuntimeError: out of memory" in capsys.readouterr().err
    assert (out / "custom_cnn" / "metrics.json").is_file()


def test_early_stopping_stops_and_keeps_both_checkpoints(tiny_dataset: Path, tmp_path: Path) -> None:
    from keras_baselines.train import TrainConfig, train

    # min_delta=1.0: no epoch can lower val_loss by 1, so patience 1 stops after epoch 2 of 5.
    config = TrainConfig(model="vgg16", data=tiny_dataset, out=tmp_path / "vgg16", image_size=32, epochs=5,
                         batch_size=4, steps_per_epoch=1, patience=1, min_delta=1.0, run_eagerly=True,
                         verbose=0)  # fmt: skip
    assert train(config).epochs == 2
    with open(tmp_path / "vgg16" / "history.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert {p.name for p in (tmp_path / "vgg16" / "checkpoints").iterdir()} == {"best.keras", "last.keras"}


def test_imagenet_weights_load_from_a_local_file(base_weights: tuple[Path, list]) -> None:
    from keras_baselines.models import build_model

    path, expected = base_weights
    keras.utils.set_random_seed(7)
    model = build_model("effnetv2b2_imagenet", image_size=32, weights=path)
    loaded = model.get_layer("efficientnetv2-b2").get_weights()
    assert len(loaded) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, expected, strict=True))
    # A freshly initialised base differs, so the equality above is the file's doing.
    scratch = build_model("effnetv2b2_scratch", image_size=32).get_layer("efficientnetv2-b2").get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(scratch, expected, strict=True))


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_wrong_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    from keras_baselines.models import build_model

    other = tmp_path / "custom_cnn.weights.h5"
    build_model("custom_cnn", image_size=32).save_weights(other)
    with pytest.raises(CatDogError, match=r"--weights .*custom_cnn\.weights\.h5.*EfficientNetV2B2"):
        build_model("effnetv2b2_imagenet", image_size=32, weights=other)


def test_user_errors_name_the_argument(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))  # nothing cached
    base = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), *SMOKE]
    cases = [
        (["--model", "effnetv2b2_imagenet", "--offline"], "efficientnetv2-b2_notop.h5 on a machine"),
        (["--model", "effnetv2b2_imagenet", "--weights", str(tmp_path / "none.weights.h5")], "file not found"),
        (["--model", "effnetv2b2_imagenet", "--weights", str(tmp_path / "w.npz")], ".weights.h5 or .h5"),
        (["--model", "custom_cnn", "--weights", str(tmp_path / "w.weights.h5")], "effnetv2b2_imagenet only"),
        (["--model", "custom_cnn", "--val-files", str(tmp_path / "none.txt")], "none.txt: file list not found"),
        (["--model", "custom_cnn", "--batch-size", "17"], "--batch-size 17: larger than the 16 training images"),
        (["--model", "custom_cnn", "--val-split", "breed"], "manifest.csv: not found"),  # the copy has none
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    missing = tmp_path / "nowhere"
    assert main(["train", "--model", "custom_cnn", "--data", str(missing), *SMOKE]) == 2
    assert f"--data {missing}: directory not found" in capsys.readouterr().err
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dataset, partial)
    shutil.rmtree(partial / "test" / "dog")
    assert main(["train", "--model", "custom_cnn", "--data", str(partial), *SMOKE]) == 2
    assert f"missing folder {partial / 'test' / 'dog'}" in capsys.readouterr().err
    assert main(["evaluate", "--model-path", str(tmp_path / "no.keras"), "--data", str(tiny_dataset)]) == 2
    assert "no.keras: file not found" in capsys.readouterr().err


def test_class_order_is_cat_then_dog(tiny_dataset: Path, tmp_path: Path) -> None:
    from keras_baselines.data import load_splits

    # A stray folder that sorts before "cat" must neither shift nor add classes.
    data = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, data)
    (data / "train" / "aardvark").mkdir()
    shutil.copy2(next((data / "train" / "dog").glob("*.jpg")), data / "train" / "aardvark" / "x.jpg")
    for mode, column in (
        ("categorical", lambda y: np.asarray(y).argmax(axis=1)),
        ("binary", lambda y: np.asarray(y)[:, 0]),
    ):
        splits = load_splits(data, image_size=32, batch_size=3, label_mode=mode, augment=False)
        assert splits.train_count + splits.val_count == 20
        test_labels = np.concatenate([column(y) for _, y in splits.test]).astype(int).tolist()
        assert test_labels == splits.test_labels == [0, 0, 0, 0, 1, 1, 1, 1]
        assert [Path(f).parent.name for f in splits.test_files] == ["cat"] * 4 + ["dog"] * 4


def test_validation_by_breed_is_the_shared_split(fused_dataset: Path) -> None:
    from keras_baselines.data import load_splits

    splits = load_splits(fused_dataset, image_size=32, batch_size=8, label_mode="binary", val_split="breed")
    expected = split_train(fused_dataset, 0.15, 42, val_split="breed")
    assert sorted(splits.val_files) == sorted(expected.val_names(fused_dataset))


@pytest.mark.parametrize(
    ("model", "cause"), [("custom_cnn", "no BatchNorm layers"), ("effnetv2b2_scratch", "BatchNorm layer(s)")]
)
def test_the_collapse_warning_says_what_the_model_has(
    tmp_path: Path, capsys: pytest.CaptureFixture, model: str, cause: str
) -> None:
    """custom_cnn has no BatchNorm: its collapse is not blamed on BatchNorm statistics."""
    from catdog.metrics import run_metrics_from_predictions, write_predictions
    from keras_baselines.cli import _report

    labels = [0] * 40 + [1] * 60
    files = [f"{'dog' if y else 'cat'}/{i}.jpg" for i, y in enumerate(labels)]
    path = write_predictions(files, labels, [0.01 + 0.001 * i for i in range(100)], tmp_path)  # ranked, all cat
    metrics = run_metrics_from_predictions(path, model=model, framework="keras", pretrained=False, num_params=1,
                                           epochs=1, train_seconds=1.0)  # fmt: skip
    _report(metrics, tmp_path)
    warning = next(line for line in capsys.readouterr().out.splitlines() if "warning:" in line)
    assert cause in warning and ("running statistics" in warning) == (model != "custom_cnn"), warning
