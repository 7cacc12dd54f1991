"""``catdog compare``'s ``--recipe``, ``val_split: breed`` and ``--force``, on one Lightning run capped at one step.

The config is the shipped ``configs/compare.yaml`` as it is (224 px, 10 epochs, random validation split): the
small recipe and the breed split come only from ``--recipe``, so a setting that did not reach the run would
train for long or validate on the wrong images, and the checks below would see it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from catdog.cli import main as catdog
from catdog.data.splits import read_file_list, split_train
from catdog.evaluation.report.collect import read_record
from catdog.metrics import read_metrics, read_predictions

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUN = "lightning-scratch"
RECIPE = dict(image_size=32, epochs=1, batch_size=8, steps_per_epoch=1, num_workers=0, accelerator="cpu",
              val_split="breed")  # fmt: skip


def _config(tmp: Path) -> Path:
    """configs/compare.yaml with absolute trainer configs and no weights files (nothing else changed)."""
    config = yaml.safe_load((ROOT / "configs" / "compare.yaml").read_text())
    config["configs"] = {key: str(ROOT / "configs" / name) for key, name in config["configs"].items()}
    config["weights"] = {"torch": None, "keras": None}
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _compare(config: Path, data: Path, out: Path, *extra: str) -> int:
    recipe = [item for key, value in RECIPE.items() for item in ("--recipe", f"{key}={value}")]
    return catdog(
        ["compare", "-c", str(config), "--data", str(data), "--out", str(out), "--only", RUN, *recipe, *extra]
    )


@pytest.fixture(scope="module")
def comparison(fused_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One ``catdog compare --only lightning-scratch`` with the small recipe: (config, out)."""
    tmp = tmp_path_factory.mktemp("compare_options")
    config, out = _config(tmp), tmp / "out"
    assert _compare(config, fused_dataset, out) == 0
    return config, out


def test_the_recipe_options_reach_the_record_and_the_run(comparison: tuple[Path, Path], fused_dataset: Path) -> None:
    _, out = comparison
    record = read_record(out / "compare.json")
    assert {key: record.recipe[key] for key in RECIPE} == RECIPE
    assert record.entry(RUN).status == "done"
    configs = sorted((out / RUN / "lightning_logs").glob("version_*/config.yaml"))
    assert configs, "the Lightning run left no resolved config"
    for path in configs:
        resolved = yaml.safe_load(path.read_text())
        assert resolved["data"]["image_size"] == 32 and resolved["data"]["batch_size"] == 8
        assert resolved["trainer"]["max_epochs"] == 1 and resolved["trainer"]["limit_train_batches"] == 1
    last = torch.load(out / RUN / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == 1 and last["epoch"] == 0  # one capped step, not 10 epochs
    assert last["catdog"]["preprocess"]["image_size"] == 32
    test_images = sum(1 for _ in (fused_dataset / "test").rglob("*.jpg"))
    assert read_metrics(out / RUN / "metrics.json").n_test == test_images
    assert len(read_predictions(out / RUN / "predictions.csv").files) == test_images


def test_val_split_breed_validates_on_whole_breeds(comparison: tuple[Path, Path], fused_dataset: Path) -> None:
    _, out = comparison
    chosen = read_file_list(out / "val_files.txt", fused_dataset)
    assert chosen == sorted(split_train(fused_dataset, 0.15, 42, val_split="breed").val_names(fused_dataset))
    manifest = pd.read_csv(fused_dataset / "manifest.csv", dtype=str, keep_default_na=False)
    train = manifest[(manifest["status"] == "ok") & (manifest["split"] == "train")]
    dogs = train[train["label"] == "dog"].set_index("destination")["breed"]
    val_breeds = {dogs[name] for name in chosen if name in dogs.index}
    train_breeds = {breed for name, breed in dogs.items() if name not in set(chosen)}
    assert val_breeds and train_breeds and not val_breeds & train_breeds  # no breed on both sides
    assert any(name.startswith("train/cat/") for name in chosen)  # and cats validate too
    configs = sorted((out / RUN / "lightning_logs").glob("version_*/config.yaml"))
    for path in configs:  # the run validated on exactly these files
        given = Path(yaml.safe_load(path.read_text())["data"]["val_files"])
        assert given.resolve() == (out / "val_files.txt").resolve()


def test_force_reruns_a_complete_run(
    comparison: tuple[Path, Path], fused_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, out = comparison
    metrics = out / RUN / "metrics.json"
    before = metrics.stat().st_mtime_ns
    capsys.readouterr()
    assert _compare(config, fused_dataset, out) == 0
    assert f"{RUN}: complete, not rerun" in capsys.readouterr().out
    assert metrics.stat().st_mtime_ns == before
    assert _compare(config, fused_dataset, out, "--force") == 0
    printed = capsys.readouterr().out
    assert f"{RUN}: started" in printed and "complete, not rerun" not in printed
    assert metrics.stat().st_mtime_ns > before
    assert read_record(out / "compare.json").entry(RUN).status == "done"
