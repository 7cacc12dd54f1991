"""keras_baselines and its backends: importing it keeps torch out and catdog never imports it; the backend is
fixed once keras is imported; ``--backend torch`` trains where TensorFlow is not installed.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "tensorflow"  # the default backend; the torch one runs in a subprocess
with contextlib.suppress(ImportError):  # Lightning before keras: see test_keras_baselines.py
    import lightning.pytorch  # noqa: F401
keras = pytest.importorskip("keras", reason="keras_baselines needs the keras extra: pip install -e '.[keras]'")

from keras_helpers import ROOT, SEED, SMOKE, subprocess_env  # noqa: E402

from catdog import CatDogError  # noqa: E402
from catdog.data.splits import read_file_list, split_train  # noqa: E402
from catdog.metrics import read_metrics, read_predictions  # noqa: E402
from keras_baselines import use_backend  # noqa: E402

pytestmark = pytest.mark.keras


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
    env = subprocess_env()
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
        env=subprocess_env(),
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
