"""``catdog compare``: all seven rows on generated data at 32 px, one capped epoch each.

One comparison (module fixture) runs the seven runs of ``configs/compare.yaml`` plus one run that fails,
with stand-in ImageNet weights (a randomly initialised timm state dict; a random Keras no-top base); the
tests check it, then rerun it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from catdog import CatDogError
from catdog.cli import main as catdog
from catdog.data.splits import read_file_list, split_train
from catdog.evaluation.compare.plan import load_config
from catdog.evaluation.report.collect import read_record
from catdog.metrics import read_metrics, read_predictions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.keras,
    pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs the keras extra"),
]

ROOT = Path(__file__).resolve().parents[2]
SEVEN = ("lightning-pretrained", "lightning-scratch", "poutyne-scratch", "keras-effnetv2b2_scratch",
         "keras-effnetv2b2_imagenet", "keras-custom_cnn", "keras-vgg16")  # fmt: skip
SMOKE_RECIPE = dict(image_size=32, epochs=1, batch_size=8, steps_per_epoch=1, num_workers=0, accelerator="cpu")


def _write_config(tmp: Path, weights: dict[str, str | None], extra_runs: list[dict] | None = None) -> Path:
    """configs/compare.yaml with the smoke recipe, the given weights and absolute trainer configs."""
    config = yaml.safe_load((ROOT / "configs" / "compare.yaml").read_text())
    config["recipe"].update(SMOKE_RECIPE)
    config["weights"] = weights
    config["configs"] = {key: str(ROOT / "configs" / name) for key, name in config["configs"].items()}
    for run in config["runs"]:
        if run["trainer"] == "keras":
            run["args"] = ["--eager"]  # no graph compilation: faster for one step
    config["runs"] += extra_runs or []
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def small_dataset(fused_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the fused dataset with its manifest rows: 16 train images per class, 6 test cats and
    3 test dogs of each test breed."""
    manifest = pd.read_csv(fused_dataset / "manifest.csv", dtype=str, keep_default_na=False)
    placed = manifest[manifest["status"] == "ok"].sort_values("destination")
    train = placed[placed["split"] == "train"].groupby("label").head(16)
    test_cats = placed[(placed["split"] == "test") & (placed["label"] == "cat")].head(6)
    test_dogs = placed[(placed["split"] == "test") & (placed["label"] == "dog")].groupby("breed").head(3)
    kept = pd.concat([train, test_cats, test_dogs])
    out = tmp_path_factory.mktemp("compare_data") / "dataset"
    for destination in kept["destination"]:
        (out / destination).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(fused_dataset / destination, out / destination)
    kept.to_csv(out / "manifest.csv", index=False)
    return out


@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """ImageNet-weights stand-ins: a timm state dict and a Keras no-top base, both randomly initialised."""
    import timm
    import torch

    folder = tmp_path_factory.mktemp("weights")
    torch_file = folder / "tf_efficientnetv2_b2.pth"
    torch.save(timm.create_model("tf_efficientnetv2_b2", pretrained=False).state_dict(), torch_file)
    keras_file = folder / "effnetv2b2_notop.weights.h5"
    script = (
        "import keras; keras.utils.set_random_seed(0); "
        "keras.applications.EfficientNetV2B2(include_top=False, weights=None, input_shape=(32, 32, 3))"
        f".save_weights({str(keras_file)!r})"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=600)
    return {"torch": str(torch_file), "keras": str(keras_file)}


@pytest.fixture(scope="module")
def comparison(
    tmp_path_factory: pytest.TempPathFactory, small_dataset: Path, stand_in_weights: dict[str, str]
) -> tuple[Path, Path, str, int]:
    """One ``catdog compare`` over the seven runs and a failing one: (config, out, stdout, exit status)."""
    tmp = tmp_path_factory.mktemp("compare")
    failing = {"name": "keras-broken", "trainer": "keras", "model": "custom_cnn", "args": ["--no-such-flag"]}
    config = _write_config(tmp, stand_in_weights, [failing])
    out = tmp / "out"
    capture = tmp / "stdout.txt"
    command = [sys.executable, "-m", "catdog", "compare", "-c", str(config), "--data", str(small_dataset),
               "--out", str(out)]  # fmt: skip
    with capture.open("w") as handle:
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=1200).returncode
    return config, out, capture.read_text(), status


def test_all_seven_rows_equal_the_recomputation(comparison: tuple[Path, Path, str, int]) -> None:
    _, out, printed, status = comparison
    assert status == 1, printed  # the failing run makes the exit status non-zero; the others go on
    text = (out / "results.md").read_text()
    table = [line for line in text.split("\n\n") if line.startswith("| run")][0]
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    rows = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert set(rows) == set(SEVEN), printed
    for name, row in rows.items():
        metrics = read_metrics(out / name / "metrics.json")
        scores = read_predictions(out / name / "predictions.csv").score()
        # metrics.json is the recomputation of its predictions, and so is the report's row.
        assert metrics.accuracy == pytest.approx(scores.accuracy, abs=1e-12)
        assert metrics.f1 == pytest.approx(scores.f1, abs=1e-12)
        assert metrics.confusion_matrix == scores.confusion_matrix
        assert (metrics.auroc is None) == (scores.auroc is None)
        if scores.auroc is not None:
            assert metrics.auroc == pytest.approx(scores.auroc, abs=1e-12)
            assert float(row["AUROC"]) == pytest.approx(scores.auroc, abs=5e-5)
        assert float(row["accuracy"]) == pytest.approx(scores.accuracy, abs=5e-5)
        assert float(row["balanced accuracy"]) == pytest.approx(scores.balanced_accuracy, abs=5e-5)
        assert float(row["ECE"]) == pytest.approx(scores.ece, abs=5e-5)
        assert int(row["test images"]) == scores.n == 12
        assert row["run time"] != "—"
        assert f"[{SEVEN.index(name) + 1}/8] {name}: done in" in printed
        entry = read_record(out / "compare.json").entry(name)
        assert entry.status == "done" and entry.seconds > 0 and entry.cpu_seconds > 0
    assert rows["lightning-pretrained"]["pretrained"] == "yes" and rows["keras-vgg16"]["published accuracy"] == "0.49"
    for section in ("## Per-breed errors", "## Calibration", "## Mistakes", "## Setup", "## Caveat on pretrained rows"):
        assert section in text
    assert "results-reliability.png" in text and (out / "results-breeds.png").is_file()


def test_every_trainer_used_the_same_validation_files(
    comparison: tuple[Path, Path, str, int], small_dataset: Path
) -> None:
    _, out, _, _ = comparison
    shared = read_file_list(out / "val_files.txt", small_dataset)
    assert shared == sorted(split_train(small_dataset, 0.15, 42).val_names(small_dataset))
    for name in SEVEN:
        recorded = out / name / "val_files.txt"
        if recorded.is_file():
            assert sorted(read_file_list(recorded, small_dataset)) == shared, name
        else:  # Lightning records the list it was given in its resolved config (splits.split_train uses exactly it)
            configs = sorted((out / name / "lightning_logs").glob("version_*/config.yaml"))
            assert configs, f"{name} records neither val_files.txt nor a resolved config"
            for config in configs:
                given = yaml.safe_load(config.read_text())["data"]["val_files"]
                assert Path(given).resolve() == (out / "val_files.txt").resolve(), (name, config)


def test_failure_is_reported_with_its_log(comparison: tuple[Path, Path, str, int]) -> None:
    _, out, printed, _ = comparison
    entry = read_record(out / "compare.json").entry("keras-broken")
    assert entry.status == "failed" and "exit status 2" in entry.reason and "--no-such-flag" in entry.reason
    assert (out / entry.log).is_file() and "--no-such-flag" in (out / entry.log).read_text()
    assert "failed: keras-broken" in printed
    missing = (out / "results.md").read_text().split("## Runs without results", 1)[1]
    assert "keras-broken" in missing and "keras-broken/run.log" in missing


def test_a_rerun_skips_finished_runs(comparison: tuple[Path, Path, str, int], small_dataset: Path) -> None:
    config, out, _, _ = comparison
    before = {name: (out / name / "metrics.json").stat().st_mtime_ns for name in SEVEN}
    seconds = {e.name: e.seconds for e in read_record(out / "compare.json").runs}
    command = [sys.executable, "-m", "catdog", "compare", "-c", str(config), "--data", str(small_dataset),
               "--out", str(out), "--only", *SEVEN]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in SEVEN:
        assert f"{name}: complete, not rerun" in result.stdout
        assert (out / name / "metrics.json").stat().st_mtime_ns == before[name]
    record = read_record(out / "compare.json")
    assert {e.name: e.seconds for e in record.runs if e.name in SEVEN} == {n: seconds[n] for n in SEVEN}
    assert record.entry("keras-broken").status == "failed"  # kept from the first run: not selected now


def test_a_run_without_weights_is_skipped_with_the_reason(
    small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write_config(tmp_path, {"torch": str(tmp_path / "absent.pth"), "keras": None})
    out = tmp_path / "out"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))  # no cached Keras weights
    status = catdog(["compare", "-c", str(config), "--data", str(small_dataset), "--out", str(out),
                     "--only", "lightning-pretrained"])  # fmt: skip
    assert status == 0
    entry = read_record(out / "compare.json").entry("lightning-pretrained")
    assert entry.status == "skipped" and f"{tmp_path / 'absent.pth'} not found" in entry.reason
    assert "weights.torch" in entry.reason
    assert not (out / "results.md").exists()  # nothing to report yet


def test_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "configs" / "compare.yaml").read_text())
    assert [run["name"] for run in config["runs"]] == list(SEVEN)
    config["configs"] = {key: str(ROOT / "configs" / name) for key, name in config["configs"].items()}
    config["recipe"]["epochs"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CatDogError, match=rf"{path}: recipe: epochs must be a positive integer"):
        load_config(path)
    config["recipe"]["epochs"] = 1
    config["runs"][0]["overrides"] = {"epoch": 3}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CatDogError, match=r"runs\[0\].overrides: unknown setting\(s\) epoch"):
        load_config(path)
    config["runs"][0]["overrides"] = {"val_split": "breeds"}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CatDogError, match=r"runs\[0\].overrides: val_split must be one of random, breed"):
        load_config(path)
    config["runs"][0]["overrides"] = {}
    config["configs"]["scratch"] = "nowhere.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CatDogError, match=rf"configs.scratch: {tmp_path / 'nowhere.yaml'} not found"):
        load_config(path)
    assert catdog(["compare", "-c", str(ROOT / "configs" / "compare.yaml"), "--only", "nope"]) == 2


@pytest.mark.parametrize(
    "trainer, log, expected",
    [
        ("lightning", "Epoch 0/9  ━━━━ 3/9\rEpoch 1/9  ━━━━ 1/9", "2/10"),
        ("poutyne", "\x1b[35mEpoch: \x1b[36m 3/10 \x1b[35mTrain steps: \x1b[36m9", "3/10"),
        ("poutyne", "Epoch:  3/10 Train steps: 9 1.2s loss: 0.69\nEpoch 3: model saved", "3/10"),
        ("keras", "Epoch 1/10\n9/9 - 3s\nEpoch 2/10\n", "2/10"),
        ("keras", "1/1 - 45s - 45s/step - accuracy: 0.3750", None),
    ],
)
def test_progress_reads_the_epoch_from_the_log(tmp_path: Path, trainer: str, log: str, expected: str | None) -> None:
    from catdog.evaluation.compare.run import _current_epoch

    path = tmp_path / "run.log"
    path.write_text(log)
    assert _current_epoch(path, trainer) == expected


def test_progress_counts_keras_history_rows_and_lightning_checkpoint_saves(tmp_path: Path) -> None:
    from catdog.evaluation.compare.plan import PlannedRun, Recipe, RunSpec
    from catdog.evaluation.compare.run import EpochWatch

    log = tmp_path / "run.log"
    log.write_text("")
    keras_run = PlannedRun(RunSpec("k", "keras", "vgg16"), Recipe(epochs=4), tmp_path / "k", [])
    watch = EpochWatch(keras_run, log)
    assert watch() is None
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "history.csv").write_text("epoch,loss\n0,0.7\n1,0.6\n")
    assert watch() == "2/4 epoch(s) done"
    lightning_run = PlannedRun(RunSpec("l", "lightning"), Recipe(epochs=3), tmp_path / "l", [])
    watch = EpochWatch(lightning_run, log)
    last = tmp_path / "l" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    for saves in (1, 2):
        last.write_bytes(b"x")
        os.utime(last, ns=(saves * 10**9, saves * 10**9))
        assert watch() == f"{saves}/3 epoch(s) done"
    assert watch() == "2/3 epoch(s) done"  # no new save, no new epoch


def test_a_failed_rerun_leaves_no_stale_results(small_dataset: Path, tmp_path: Path) -> None:
    from catdog.metrics import run_metrics_from_predictions, write_metrics, write_predictions

    broken = {"name": "keras-broken", "trainer": "keras", "model": "custom_cnn", "args": ["--no-such-flag"]}
    config = _write_config(tmp_path, {"torch": None, "keras": None}, [broken])
    out = tmp_path / "out"
    old = write_predictions(["test/cat/a.jpg", "test/dog/b.jpg"], [0, 1], [0.2, 0.9], out / "keras-broken")
    metrics = run_metrics_from_predictions(
        old, model="custom_cnn", framework="keras", pretrained=False, num_params=1, epochs=1, train_seconds=1.0
    )
    write_metrics(metrics, out / "keras-broken")
    status = catdog(["compare", "-c", str(config), "--data", str(small_dataset), "--out", str(out),
                     "--only", "keras-broken"])  # fmt: skip
    assert status == 1
    assert not (out / "keras-broken" / "metrics.json").exists() and not old.exists()
    assert read_record(out / "compare.json").entry("keras-broken").status == "failed"


def test_compare_imports_neither_tensorflow_nor_torch() -> None:
    script = (
        "import sys; import catdog.evaluation.compare.run, catdog.evaluation.report.sections; "
        "heavy = [m for m in ('tensorflow', 'keras', 'torch', 'lightning') if m in sys.modules]; "
        "sys.exit(f'imported {heavy}' if heavy else 0)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
