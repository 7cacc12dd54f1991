"""keras_baselines: the pieces and the command, without the four shared runs.

Data pipelines and validation splits, BatchNorm recalibration, ``--model all`` failures, early stopping, user
errors, class order, backends (the torch-backend run and the import checks use subprocesses), the collapse
warning. Everything runs at 32 px, eagerly (no graph compilation), on a small copy of the fused test dataset.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "tensorflow"  # the default backend; the torch one runs in a subprocess
# Lightning before keras: typing caches Unions by set equality, so a ``Optional[Union[float, int]]`` that keras
# builds first becomes Lightning's ``limit_train_batches`` type, and the Trainer arguments of the other tests
# in this process (the poutyne tests, test_train_cli) would parse ``--trainer.limit_train_batches 2`` as 2.0.
with contextlib.suppress(ImportError):  # the keras tests themselves do not need it
    import lightning.pytorch  # noqa: F401
keras = pytest.importorskip("keras", reason="keras_baselines needs the keras extra: pip install -e '.[keras]'")

from keras_helpers import SEED, SMOKE, decode  # noqa: E402

from catdog import CLASSES, CatDogError  # noqa: E402
from catdog.data.splits import read_file_list, relative_name, split_train, write_file_list  # noqa: E402
from catdog.metrics import read_metrics, read_predictions  # noqa: E402
from keras_baselines import use_backend  # noqa: E402
from keras_baselines.cli import main  # noqa: E402

pytestmark = pytest.mark.keras

ROOT = Path(__file__).resolve().parents[2]


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def test_import_keeps_torch_out_and_catdog_never_imports_keras_baselines() -> None:
    code = (
        "import sys, keras_baselines, keras_baselines.cli\n"
        "keras_baselines.use_backend('tensorflow')\n"
        "import keras_baselines.train, keras_baselines.data, keras_baselines.models, keras_baselines.callbacks\n"
        "import keras\n"
        "assert keras.backend.backend() == 'tensorflow', keras.backend.backend()\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad[:5]\n"
        "print('ok')\n"
    )
    env = _subprocess_env()
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
    # catdog never imports keras_baselines (checked in its source, so no import order can hide it).
    for path in (ROOT / "catdog").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] == "keras_baselines" for n in names), f"{path} imports keras_baselines"


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
    np.testing.assert_allclose(images, [decode(tiny_dataset / f, 32).round() for f in splits.val_files], atol=1e-4)
    assert labels.tolist() == [0, 0, 0, 1, 1]
    # Training: the 15 other images, shuffled, in full batches only (15 = 3 x 4 + 3 dropped).
    batches = [(x, y) for x, y in splits.train]
    assert [len(x) for x, _ in batches] == [4, 4, 4]
    decoded = {f: decode(tiny_dataset / f, 32).round() for f in splits.train_files}
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


def _conv_bn_model() -> keras.Model:
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.99, name="bn")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_recalibration_gives_the_average_of_the_batch_statistics() -> None:
    from keras_baselines.callbacks import recalibrate_batchnorm

    keras.utils.set_random_seed(0)
    model = _conv_bn_model()
    rng = np.random.default_rng(0)
    batches = [(rng.normal(2.0, 3.0, (8, 6, 6, 3)).astype("float32"), np.zeros((8, 1))) for _ in range(5)]
    single = (batches[0][0][:1], np.zeros((1, 1)))  # a batch of one is skipped
    assert recalibrate_batchnorm(model, [single, *batches], max_batches=5) == 4
    conv = keras.Model(model.input, model.get_layer("conv").output)
    outputs = [np.asarray(conv(x)) for x, _ in batches[:4]]
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean, np.mean([o.mean(axis=(0, 1, 2)) for o in outputs], axis=0), atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance, np.mean([o.var(axis=(0, 1, 2)) for o in outputs], axis=0), rtol=1e-4)
    assert bn.momentum == 0.99  # restored


def test_recalibration_keeps_the_statistics_of_a_layer_that_saw_too_few_values() -> None:
    """As in the torch trainers: a re-estimate from fewer than 512 values per channel is not used."""
    from keras_baselines.callbacks import recalibrate_batchnorm

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.BatchNormalization(name="wide")(keras.layers.Conv2D(4, 3, name="conv")(inputs))  # 16 per image
    x = keras.layers.Reshape((1, 1, 4))(keras.layers.GlobalAveragePooling2D()(x))
    x = keras.layers.BatchNormalization(name="deep")(x)  # one value per image
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    rng = np.random.default_rng(0)
    batches = [(rng.normal(2.0, 3.0, (8, 6, 6, 3)).astype("float32"), None) for _ in range(4)]  # 32 images
    deep_before = np.asarray(model.get_layer("deep").moving_variance).copy()
    wide_before = np.asarray(model.get_layer("wide").moving_mean).copy()
    assert recalibrate_batchnorm(model, batches) == 4
    np.testing.assert_array_equal(model.get_layer("deep").moving_variance, deep_before)  # 32 values: kept
    assert np.abs(np.asarray(model.get_layer("wide").moving_mean) - wide_before).max() > 0.1  # 512: re-estimated
    assert recalibrate_batchnorm(model, batches, min_values=32) == 4
    assert np.abs(np.asarray(model.get_layer("deep").moving_variance) - deep_before).max() > 0.01


def test_recalibration_runs_before_early_validations_only(tmp_path: Path) -> None:
    from keras_baselines.callbacks import BatchNormRecalibration

    keras.utils.set_random_seed(0)
    model = _conv_bn_model()
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(1)
    images = rng.normal(5.0, 2.0, (32, 6, 6, 3)).astype("float32")  # 512 values per channel at "bn"
    labels = rng.integers(0, 2, (32, 1)).astype("float32")
    gaps: list[float] = []  # |moving mean - the training images' mean| at each validation

    class Probe(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            conv = keras.Model(self.model.input, self.model.get_layer("conv").output)
            train_mean = np.asarray(conv(images)).mean(axis=(0, 1, 2))
            gaps.append(float(np.abs(np.asarray(self.model.get_layer("bn").moving_mean) - train_mean).max()))

    batches = [(images[:16], labels[:16]), (images[16:], labels[16:])]
    callback = BatchNormRecalibration(batches, max_batches=2, max_steps=3)
    model.fit(images, labels, batch_size=16, validation_data=batches[0], epochs=3, callbacks=[callback, Probe()],
              shuffle=False, verbose=0)  # fmt: skip
    # After epoch 1 (2 steps) the statistics are the training images'; epochs 2 and 3 start at 4 and 6
    # steps, past max_steps, and momentum 0.99 has left the moving mean far from them.
    assert callback.recalibrations == 1
    assert gaps[0] < 1e-4 and min(gaps[1:]) > 0.1, gaps
    model.evaluate(*batches[0], verbose=0, callbacks=[callback])  # outside fit: never
    assert callback.recalibrations == 1


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


def test_backend_is_fixed_once_keras_is_imported() -> None:
    assert keras.backend.backend() == "tensorflow"
    use_backend("tensorflow")  # same backend: fine
    with pytest.raises(CatDogError, match="already imported"):
        use_backend("torch")


#: Runs ``python -m keras_baselines`` as if TensorFlow were not installed.
_WITHOUT_TENSORFLOW = """
import importlib.machinery, json, sys

class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        pass

sys.meta_path.insert(0, NoTensorFlow())
from keras_baselines.cli import main
code = main(sys.argv[1:])
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "torch": "torch" in sys.modules}))
raise SystemExit(code)
"""


def test_torch_backend_trains_without_tensorflow(tiny_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="--backend torch needs torch")
    pytest.importorskip("grain", reason="--backend torch reads images with grain (the keras extra)")
    out = tmp_path / "custom_cnn"
    argv = ["train", "--backend", "torch", "--model", "custom_cnn", "--data", str(tiny_dataset), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TENSORFLOW, *argv, "--epochs", "2", *SMOKE],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert modules == {"tensorflow": False, "torch": True}
    info = json.loads((out / "run.json").read_text())
    assert info["backend"] == "torch"
    metrics = read_metrics(out / "metrics.json")
    assert metrics.framework == "keras" and metrics.epochs == 2
    assert [sum(row) for row in metrics.confusion_matrix] == [4, 4]
    assert sorted(p.name for p in (out / "epochs").glob("*.keras")) == ["epoch_001.keras", "epoch_002.keras"]
    # Same validation files as on TensorFlow, and the metrics come from the predictions.
    expected = split_train(tiny_dataset, val_fraction=0.15, seed=SEED).val_names(tiny_dataset)
    assert read_file_list(out / "val_files.txt", tiny_dataset) == sorted(expected)
    assert metrics.confusion_matrix == read_predictions(out / "predictions.csv").score().confusion_matrix


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
