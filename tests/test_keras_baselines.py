"""keras_baselines: the four Keras models train, evaluate and report in the shared metrics schema.

Everything runs at 32 px for one or two single-step epochs, eagerly (no graph compilation), on a small
copy of the fused test dataset; the torch-backend run and the import checks use subprocesses.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "tensorflow"  # the default backend; the torch one runs in a subprocess
keras = pytest.importorskip("keras", reason="keras_baselines needs the keras extra: pip install -e '.[keras]'")

from catdog import CLASSES, CatDogError  # noqa: E402
from catdog.metrics import RunMetrics, read_metrics  # noqa: E402
from keras_baselines import MODEL_NAMES, use_backend  # noqa: E402
from keras_baselines.cli import main  # noqa: E402

pytestmark = pytest.mark.keras

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--image-size", "32", "--batch-size", "4", "--steps-per-epoch", "1", "--eager", "--quiet", "--seed", "0"]
SAVES_EVERY_EPOCH = {"effnetv2b2_scratch", "effnetv2b2_imagenet", "custom_cnn"}
CHECKPOINTS_BEST = {"effnetv2b2_imagenet", "vgg16"}


def _count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix == ".jpg")


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@pytest.fixture(scope="module")
def tiny_dataset(fused_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the fused dataset: 10 train and 4 test images per class."""
    out = tmp_path_factory.mktemp("keras_data") / "dataset"
    for split, keep in (("train", 10), ("test", 4)):
        for name in CLASSES:
            (out / split / name).mkdir(parents=True)
            for path in sorted((fused_dataset / split / name).glob("*.jpg"))[:keep]:
                shutil.copy2(path, out / split / name / path.name)
    return out


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


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_trains_evaluates_and_writes_metrics(all_runs: Path, tiny_dataset: Path, name: str) -> None:
    run_dir = all_runs / name
    raw = json.loads((run_dir / "metrics.json").read_text())
    assert set(raw) == {f.name for f in fields(RunMetrics)}
    metrics = read_metrics(run_dir / "metrics.json")
    assert metrics.model == name
    assert metrics.framework == "keras"
    assert metrics.pretrained is (name == "effnetv2b2_imagenet")
    assert metrics.epochs == 2
    assert metrics.num_params > 0
    assert metrics.train_seconds > 0
    # Rows are the true class in CLASSES order: as many as the test folders hold.
    assert [sum(row) for row in metrics.confusion_matrix] == [_count(tiny_dataset / "test" / c) for c in CLASSES]
    with open(run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"accuracy", "loss", "val_accuracy", "val_loss"} <= set(rows[0])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["backend"] == "tensorflow"
    assert info["class_names"] == ["cat", "dog"]
    assert info["train_images"] + info["val_images"] == 20
    assert (run_dir / "model.keras").is_file()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_model_and_best_checkpoint(all_runs: Path, name: str) -> None:
    run_dir = all_runs / name
    saved = sorted(p.name for p in (run_dir / "epochs").glob("*.keras")) if (run_dir / "epochs").is_dir() else []
    if name in SAVES_EVERY_EPOCH:
        assert saved == ["epoch_001.keras", "epoch_002.keras"]
    else:
        assert saved == []
    metrics = read_metrics(run_dir / "metrics.json")
    best = run_dir / "checkpoints" / "best.keras"
    if name in CHECKPOINTS_BEST:
        assert best.is_file()
        assert metrics.checkpoint == str(best)
    else:
        assert not best.exists()
        assert metrics.checkpoint == str(run_dir / "model.keras")


def test_saved_epoch_model_loads_and_predicts(all_runs: Path) -> None:
    model = keras.saving.load_model(all_runs / "custom_cnn" / "epochs" / "epoch_002.keras")
    probs = model.predict(keras.ops.zeros((3, 32, 32, 3)), verbose=0)
    assert tuple(probs.shape) == (3, 1)


def test_evaluate_command_reproduces_the_training_metrics(all_runs: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    run_dir = all_runs / "custom_cnn"
    argv = ["evaluate", "--model-path", str(run_dir / "model.keras"), "--data", str(tiny_dataset)]
    assert main([*argv, "--out", str(tmp_path), "--batch-size", "3"]) == 0
    evaluated = read_metrics(tmp_path / "metrics.json")
    trained = read_metrics(run_dir / "metrics.json")
    assert evaluated.model == "custom_cnn" and evaluated.framework == "keras"
    assert evaluated.epochs == trained.epochs == 2
    assert evaluated.confusion_matrix == trained.confusion_matrix
    assert evaluated.auroc == pytest.approx(trained.auroc, abs=1e-6)


def test_early_stopping_stops_and_keeps_history(tiny_dataset: Path, tmp_path: Path) -> None:
    from keras_baselines.train import TrainConfig, train

    # min_delta=1.0: no epoch can improve val_accuracy by 1, so patience 1 stops after epoch 2 of 5.
    config = TrainConfig(
        model="vgg16",
        data=tiny_dataset,
        out=tmp_path / "vgg16",
        image_size=32,
        epochs=5,
        batch_size=4,
        steps_per_epoch=1,
        patience=1,
        min_delta=1.0,
        run_eagerly=True,
        verbose=0,
    )
    metrics = train(config)
    assert metrics.epochs == 2
    with open(tmp_path / "vgg16" / "history.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert (tmp_path / "vgg16" / "checkpoints" / "best.keras").is_file()


def test_imagenet_weights_load_from_a_local_file(base_weights: tuple[Path, list]) -> None:
    import numpy as np

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


def test_missing_weights_errors(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))  # nothing cached
    base = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), *SMOKE]
    assert main([*base, "--model", "effnetv2b2_imagenet", "--offline"]) == 2
    message = capsys.readouterr().err
    assert "--weights PATH" in message and "efficientnetv2-b2_notop.h5" in message
    # --model all checks the weights before training anything.
    assert main([*base, "--model", "all", "--offline"]) == 2
    assert "--weights PATH" in capsys.readouterr().err
    assert main([*base, "--model", "effnetv2b2_imagenet", "--weights", str(tmp_path / "none.weights.h5")]) == 2
    assert "none.weights.h5: file not found" in capsys.readouterr().err
    assert main([*base, "--model", "effnetv2b2_imagenet", "--weights", str(tmp_path / "w.npz")]) == 2
    assert ".weights.h5 or .h5" in capsys.readouterr().err
    assert main([*base, "--model", "custom_cnn", "--weights", str(tmp_path / "w.weights.h5")]) == 2
    assert "effnetv2b2_imagenet only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_data_errors(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert main(["train", "--model", "custom_cnn", "--data", str(missing), *SMOKE]) == 2
    message = capsys.readouterr().err
    assert f"--data {missing}: directory not found" in message and "catdog fuse" in message

    partial = tmp_path / "partial"
    shutil.copytree(tiny_dataset, partial)
    shutil.rmtree(partial / "test" / "dog")
    assert main(["train", "--model", "custom_cnn", "--data", str(partial), *SMOKE]) == 2
    assert f"missing folder {partial / 'test' / 'dog'}" in capsys.readouterr().err

    assert main(["evaluate", "--model-path", str(tmp_path / "no.keras"), "--data", str(tiny_dataset)]) == 2
    assert "no.keras: file not found" in capsys.readouterr().err


def test_class_order_is_cat_then_dog(tiny_dataset: Path, tmp_path: Path) -> None:
    import numpy as np

    from keras_baselines.data import labels_from_files, load_splits

    # A stray folder that sorts before "cat" must neither shift nor add classes.
    data = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, data)
    (data / "train" / "aardvark").mkdir()
    shutil.copy2(next((data / "train" / "dog").glob("*.jpg")), data / "train" / "aardvark" / "x.jpg")

    splits = load_splits(data, image_size=32, batch_size=3, label_mode="categorical", augment=False)
    assert splits.train_count + splits.val_count == 20
    test_labels = np.concatenate([np.argmax(y, axis=1) for _, y in splits.test]).tolist()
    assert test_labels == labels_from_files(splits.test_files) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [Path(f).parent.name for f in splits.test_files] == ["cat"] * 4 + ["dog"] * 4
    train_labels = np.concatenate([y for _, y in splits.train] + [y for _, y in splits.val])
    assert train_labels.shape == (20, 2)
    assert train_labels.sum(axis=0).tolist() == [10, 10]  # one-hot: 10 cats in column 0, 10 dogs in column 1

    binary = load_splits(data, image_size=32, batch_size=4, label_mode="binary", augment=False)
    assert np.concatenate([y for _, y in binary.test]).ravel().tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


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


class _FixedOutputs:
    """Stands in for a model whose test-set outputs are known."""

    def __init__(self, outputs: list[list[float]]) -> None:
        self.outputs = outputs

    def predict(self, data: object, verbose: int = 0) -> list[list[float]]:
        return self.outputs


@pytest.mark.parametrize(
    "outputs",
    [
        [[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.55, 0.45]],  # 2-way softmax
        [[0.1], [0.6], [0.7], [0.8], [0.45]],  # one sigmoid
    ],
)
def test_evaluation_scores_dog_as_the_positive_class(outputs: list[list[float]]) -> None:
    from keras_baselines.train import evaluate_model

    files = ["d/test/cat/1.jpg", "d/test/cat/2.jpg", "d/test/dog/3.jpg", "d/test/dog/4.jpg", "d/test/dog/5.jpg"]
    result = evaluate_model(_FixedOutputs(outputs), None, files)
    assert result.targets == [0, 0, 1, 1, 1]
    assert result.confusion_matrix == [[1, 1], [1, 2]]
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # Dog scores 0.7, 0.8, 0.45 against cat scores 0.1, 0.6: 5 of 6 pairs ranked right.
    assert result.auroc == pytest.approx(5 / 6, abs=2e-3)
