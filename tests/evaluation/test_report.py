"""``catdog report``: the results table, plots, and how it treats bad or missing metrics files."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from catdog.cli import main as catdog
from catdog.data.splits import labelled_images, relative_name
from catdog.evaluation.report.collect import (
    ComparisonRecord,
    RunRecord,
    breed_table,
    breeds_of_test_dogs,
    worst_mistakes,
)
from catdog.evaluation.report.command import COLUMNS
from catdog.metrics import (
    Predictions,
    RunMetrics,
    read_predictions,
    run_metrics_from_predictions,
    score,
    write_metrics,
    write_predictions,
)

#: Runs as the three trainers write them: name (folder under runs/) -> metrics.
RUNS = {
    "pretrained": RunMetrics(
        "tf_efficientnetv2_b2", "lightning", True, 0.98765, 0.9871, 0.99903, [[3400, 105], [62, 3443]],
        8_964_386, 5, 1234.5, "runs/pretrained/checkpoints/best.ckpt",
    ),
    "scratch": RunMetrics(
        "tf_efficientnetv2_b2", "lightning", False, 0.8123, 0.8011, 0.8842, [[2900, 605], [710, 2795]],
        8_964_386, 20, 7400.0,
    ),
    "poutyne-pretrained": RunMetrics(
        "tf_efficientnetv2_b2", "poutyne", True, 0.9811, 0.9807, 0.9972, [[3410, 95], [38, 3467]],
        8_964_386, 5, 1300.0,
    ),
    "keras/resnet50": RunMetrics(
        "ResNet50", "keras", True, 0.9701, 0.9695, 0.9951, [[3380, 125], [84, 3421]], 23_591_810, 10, 45.3,
    ),
}  # fmt: skip


def _markdown_rows(text: str) -> list[dict[str, str]]:
    """The first Markdown table in ``text`` as dicts (header -> cell text)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break  # the end of the first table
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, body = cells[0], cells[2:]
    assert set(cells[1][0]) <= {":", "-"}, "second line must be the Markdown separator"
    return [dict(zip(header, row, strict=True)) for row in body]


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    for name, metrics in RUNS.items():
        write_metrics(metrics, runs / name)
    return runs


def test_table_matches_the_metrics_written(runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report" / "results.md"
    assert catdog(["report", "--runs", str(runs_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _markdown_rows(out.read_text())
    assert rows == _markdown_rows(printed), "the printed table is the one written to --out"
    assert list(rows[0]) == list(COLUMNS)
    # Best accuracy first.
    expected_order = sorted(RUNS, key=lambda name: -RUNS[name].accuracy)
    assert [row["run"] for row in rows] == expected_order
    for row in rows:
        metrics = RUNS[row["run"]]
        assert row["model"] == metrics.model
        assert row["framework"] == metrics.framework
        assert row["pretrained"] == ("yes" if metrics.pretrained else "no")
        assert float(row["accuracy"]) == pytest.approx(metrics.accuracy, abs=5e-5)
        assert float(row["F1"]) == pytest.approx(metrics.f1, abs=5e-5)
        assert float(row["AUROC"]) == pytest.approx(metrics.auroc, abs=5e-5)
        assert int(row["parameters"].replace(",", "")) == metrics.num_params
        assert int(row["epochs"]) == metrics.epochs
    times = {row["run"]: row["training time"] for row in rows}
    assert times["keras/resnet50"] == "45.3 s"
    assert times["pretrained"] == "20 min 34 s"  # 1234.5 s
    assert times["scratch"] == "2 h 03 min"  # 7400 s


def test_plots_are_valid_pngs(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    assert catdog(["report", "--runs", str(runs_dir), "--out", str(out)]) == 0
    accuracy = tmp_path / "results-accuracy.png"
    confusions = sorted(tmp_path.glob("results-confusion-*.png"))
    assert accuracy.is_file()
    assert [p.name for p in confusions] == sorted(f"results-confusion-{name.replace('/', '-')}.png" for name in RUNS)
    for path in [accuracy, *confusions]:
        with Image.open(path) as image:
            image.verify()  # checks the PNG structure and CRCs
        with Image.open(path) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert width >= 300 and height >= 250, f"{path.name} is only {image.size}"
            # A real drawing, not a blank canvas.
            grey = image.convert("L")
            low, high = grey.getextrema()
            assert high - low > 100
            assert len(grey.getcolors(maxcolors=256)) > 10
    # The Markdown links every plot.
    text = out.read_text()
    for path in [accuracy, *confusions]:
        assert f"({path.name})" in text


def test_malformed_and_missing_metrics_are_named_not_fatal(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = runs_dir / "broken" / "metrics.json"
    broken.parent.mkdir()
    broken.write_text('{"model": "x", ')
    out_of_range = runs_dir / "poutyne-bad" / "metrics.json"
    out_of_range.parent.mkdir()
    data = json.loads((runs_dir / "scratch" / "metrics.json").read_text())
    out_of_range.write_text(json.dumps({**data, "accuracy": 1.7}))
    no_field = runs_dir / "keras" / "vgg16" / "metrics.json"
    no_field.parent.mkdir(parents=True)
    no_field.write_text(json.dumps({k: v for k, v in data.items() if k != "auroc"}))
    untested = runs_dir / "untested" / "checkpoints" / "last.ckpt"
    untested.parent.mkdir(parents=True)
    untested.write_bytes(b"not read")

    out = tmp_path / "results.md"
    assert catdog(["report", "--runs", str(runs_dir), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert str(broken) in captured.err and "not valid JSON" in captured.err
    assert str(out_of_range) in captured.err and "accuracy" in captured.err
    assert str(no_field) in captured.err and "auroc" in captured.err
    assert str(runs_dir / "untested") in captured.err and "catdog test" in captured.err
    rows = _markdown_rows(out.read_text())
    assert sorted(row["run"] for row in rows) == sorted(RUNS)


def test_no_usable_metrics_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "runs"
    (empty / "only-broken").mkdir(parents=True)
    (empty / "only-broken" / "metrics.json").write_text("[]")
    assert catdog(["report", "--runs", str(empty), "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert "only-broken" in err and "no readable metrics.json" in err
    assert not (tmp_path / "r.md").exists()

    missing = tmp_path / "nowhere"
    assert catdog(["report", "--runs", str(missing)]) == 2
    assert f"--runs {missing}: folder not found" in capsys.readouterr().err


# -- the report from saved predictions --------------------------------------------------------------

#: name -> (framework, model, pretrained, how its predictions are made)
PREDICTED_RUNS = {
    "lightning-pretrained": ("lightning", "tf_efficientnetv2_b2", True, "good"),
    "lightning-scratch": ("lightning", "tf_efficientnetv2_b2", False, "noisy"),
    "poutyne": ("poutyne", "tf_efficientnetv2_b2", False, "noisy"),
    "keras/custom_cnn": ("keras", "custom_cnn", False, "noisy"),
    "keras/vgg16": ("keras", "vgg16", False, "collapsed"),
    "keras/effnetv2b2_scratch": ("keras", "effnetv2b2_scratch", False, "perfect"),
}
PUBLISHED = {"lightning-pretrained": "0.98", "lightning-scratch": "0.86", "poutyne": "0.86",
             "keras/custom_cnn": "0.68", "keras/vgg16": "0.49", "keras/effnetv2b2_scratch": "0.40"}  # fmt: skip


def _test_files(dataset: Path) -> tuple[list[str], np.ndarray]:
    paths, labels = labelled_images(dataset / "test")
    return [relative_name(p, dataset) for p in paths], np.asarray(labels)


def _p_dog(kind: str, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "perfect":
        return np.where(labels == 1, 0.9, 0.1) + rng.uniform(-0.05, 0.05, len(labels))
    if kind == "collapsed":  # ranks well, calls everything Cat
        return np.clip(0.05 + 0.3 * labels + rng.normal(0, 0.06, len(labels)), 0.0, 0.49)
    spread = 0.25 if kind == "good" else 0.45
    return np.clip(np.where(labels == 1, 0.75, 0.25) + rng.normal(0, spread, len(labels)), 0.0, 1.0)


@pytest.fixture(scope="module")
def predicted_runs_once(tmp_path_factory: pytest.TempPathFactory, fused_dataset: Path) -> tuple[Path, str]:
    """Runs with predictions.csv + metrics.json computed from it, on the fused test split. Read-only."""
    tmp_path = tmp_path_factory.mktemp("predicted")
    files, labels = _test_files(fused_dataset)
    breeds = breeds_of_test_dogs(fused_dataset)
    hard_breed = sorted(set(breeds.values()))[0]
    hard_files = {f for f, b in breeds.items() if b == hard_breed}
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for name, (framework, model, pretrained, kind) in PREDICTED_RUNS.items():
        p = _p_dog(kind, labels, rng)
        if kind in ("good", "noisy"):  # one test breed is called Cat, confidently
            p = np.where([f in hard_files for f in files], 0.02, p)
        path = write_predictions(files, labels.tolist(), p.tolist(), runs / name)
        metrics = run_metrics_from_predictions(
            path, model=model, framework=framework, pretrained=pretrained, num_params=1000, epochs=1, train_seconds=2.0
        )
        write_metrics(metrics, runs / name)
    return runs, hard_breed


@pytest.fixture
def predicted_runs(predicted_runs_once: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """A copy of :func:`predicted_runs_once` the test may change."""
    runs, hard_breed = predicted_runs_once
    return Path(shutil.copytree(runs, tmp_path / "runs")), hard_breed


@pytest.fixture(scope="module")
def full_report(predicted_runs_once: tuple[Path, str], fused_dataset: Path) -> Path:
    """``catdog report --data`` over :func:`predicted_runs_once`: the path of results.md."""
    runs, _ = predicted_runs_once
    out = runs.parent / "report" / "results.md"
    assert catdog(["report", "--runs", str(runs), "--out", str(out), "--data", str(fused_dataset)]) == 0
    return out


def test_rows_equal_the_recomputation_from_predictions(
    predicted_runs_once: tuple[Path, str], full_report: Path
) -> None:
    import torch
    from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_f1_score

    runs, _ = predicted_runs_once
    out = full_report
    rows = {row["run"]: row for row in _markdown_rows(out.read_text())}
    assert set(rows) == set(PREDICTED_RUNS)
    for name, row in rows.items():
        predictions = read_predictions(runs / name / "predictions.csv")
        scores = score(predictions.labels, predictions.p_dog)
        p, y = torch.tensor(predictions.p_dog), torch.tensor(predictions.labels)
        assert float(row["accuracy"]) == pytest.approx(float(binary_accuracy(p, y, threshold=0.5)), abs=5e-5)
        assert float(row["F1"]) == pytest.approx(float(binary_f1_score(p, y, threshold=0.5)), abs=5e-5)
        assert float(row["AUROC"]) == pytest.approx(float(binary_auroc(p, y)), abs=5e-5)
        assert float(row["balanced accuracy"]) == pytest.approx(scores.balanced_accuracy, abs=5e-5)
        assert float(row["ECE"]) == pytest.approx(scores.ece, abs=5e-5)
        assert int(row["test images"]) == len(predictions.files)
        assert row["published accuracy"] == PUBLISHED[name]
    assert "collapsed to one class" in rows["keras/vgg16"]["notes"]
    assert all("collapsed" not in rows[name]["notes"] for name in rows if name != "keras/vgg16")
    assert "ImageNet-pretrained" in rows["lightning-pretrained"]["notes"]
    text = out.read_text()
    assert "## Caveat on pretrained rows" in text and "ImageNet" in text
    assert "**keras/vgg16**: accuracy" in text  # the collapse warning, in words


def test_a_metrics_file_that_disagrees_with_its_predictions_is_named(
    predicted_runs: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs, _ = predicted_runs
    path = runs / "poutyne" / "metrics.json"
    data = json.loads(path.read_text())
    recomputed = data["accuracy"]
    path.write_text(json.dumps({**data, "accuracy": round(1.0 - recomputed, 3)}))
    out = tmp_path / "results.md"
    assert catdog(["report", "--runs", str(runs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{path} disagrees with predictions.csv: accuracy" in err
    row = next(row for row in _markdown_rows(out.read_text()) if row["run"] == "poutyne")
    assert float(row["accuracy"]) == pytest.approx(recomputed, abs=5e-5)
    assert "Pass `--data DATASET`" in out.read_text()  # no dataset: no breeds, no gallery, and it says so


def test_per_breed_errors_match_the_manifest(
    predicted_runs_once: tuple[Path, str], fused_dataset: Path, full_report: Path
) -> None:
    runs, hard_breed = predicted_runs_once
    text = full_report.read_text()
    section = text.split("## Per-breed errors", 1)[1].split("\n## ", 1)[0]
    rows = {row["breed"]: row for row in _markdown_rows(section)}
    manifest = pd.read_csv(fused_dataset / "manifest.csv", keep_default_na=False)
    dogs = manifest[(manifest.split == "test") & (manifest.label == "dog") & (manifest.status == "ok")]
    assert set(rows) == set(dogs.breed) and len(rows) >= 2
    for name in PREDICTED_RUNS:
        predictions = pd.read_csv(runs / name / "predictions.csv")
        merged = predictions.merge(dogs, left_on="file", right_on="destination")
        for breed, group in merged.groupby("breed"):
            assert int(rows[breed]["images"]) == len(group)
            assert float(rows[breed][name]) == pytest.approx((group.p_dog > 0.5).mean(), abs=5e-3)
    assert float(rows[hard_breed]["lightning-scratch"]) == 0.0
    assert f"Breeds most often called Cat: {hard_breed} (" in text
    assert "(results-breeds.png)" in text


def test_calibration_gallery_and_pngs(predicted_runs: tuple[Path, str], fused_dataset: Path, tmp_path: Path) -> None:
    runs, _ = predicted_runs
    out = tmp_path / "results.md"
    assert catdog(["report", "--runs", str(runs), "--out", str(out), "--data", str(fused_dataset)]) == 0
    text = out.read_text()
    calibration = text.split("## Calibration", 1)[1].split("\n## ", 1)[0]
    eces = {row["run"]: float(row["ECE"]) for row in _markdown_rows(calibration)}
    assert list(eces.values()) == sorted(eces.values()) and set(eces) == set(PREDICTED_RUNS)
    galleries = sorted(p.name for p in tmp_path.glob("results-mistakes-*.png"))
    with_mistakes = sorted(f"results-mistakes-{n.replace('/', '-')}.png" for n in PREDICTED_RUNS if "perfect" not in
                           PREDICTED_RUNS[n][3])  # fmt: skip
    assert galleries == with_mistakes
    assert "**keras/effnetv2b2_scratch**: no wrong test prediction." in text
    for name in ("results-reliability.png", "results-breeds.png", *galleries):
        assert f"({name})" in text
        with Image.open(tmp_path / name) as image:
            grey = image.convert("L")
            assert grey.getextrema()[1] - grey.getextrema()[0] > 100 and len(grey.getcolors(maxcolors=4096)) > 10


def test_worst_mistakes_are_the_most_confident_wrong_ones() -> None:
    predictions = Predictions(
        ["a", "b", "c", "d", "e", "f"], np.array([0, 0, 1, 1, 1, 0]), np.array([0.9, 0.6, 0.05, 0.45, 0.8, 0.2])
    )
    mistakes, wrong = worst_mistakes(predictions, {"c": "basenji"}, count=3)
    assert wrong == 4
    assert [(m.file, m.breed) for m in mistakes] == [("c", "basenji"), ("a", ""), ("b", "")]
    assert [m.confidence for m in mistakes] == pytest.approx([0.95, 0.9, 0.6])


@pytest.mark.parametrize("run_count", [1, 2, 6])
def test_breeds_heatmap_title_and_axes_lie_inside_the_figure_apart(run_count: int) -> None:
    """One run makes a narrow figure: its title must still fit, above the heatmap and its colour bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from catdog.evaluation.report.plots import BREEDS_TITLE, breeds_figure

    names = ["american_staffordshire_terrier", "greater_swiss_mountain_dog", "german_short-haired_pointer", "pug"]
    breeds = {f"train/dog/{index}.jpg": names[index % len(names)] for index in range(24)}
    files = list(breeds)
    rng = np.random.default_rng(run_count)
    predictions = {
        f"keras/run-{index}": Predictions(files, np.ones(len(files), dtype=int), rng.uniform(0, 1, len(files)))
        for index in range(run_count)
    }
    fig = breeds_figure(breed_table(predictions, breeds))
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (title,) = [text for text in fig.texts if text.get_text().startswith(BREEDS_TITLE[0])]
    assert title.get_text().replace("\n", " ") == " ".join(BREEDS_TITLE)
    title_box = title.get_window_extent(renderer)
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    for box in [title_box, *(ax.get_tightbbox(renderer) for ax in fig.axes)]:
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (box, fig.bbox)
        assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, (box, fig.bbox)
    for ax in fig.axes:
        assert not title_box.overlaps(ax.get_tightbbox(renderer)), ax


def test_comparison_record_adds_setup_times_and_missing_runs(
    predicted_runs: tuple[Path, str], fused_dataset: Path, tmp_path: Path
) -> None:
    runs, _ = predicted_runs
    record = ComparisonRecord(
        data=str(fused_dataset), recipe={"image_size": 32, "epochs": 1, "seed": 42}, device="CPU: test",
        val_files="val_files.txt", total_seconds=125.0,
        runs=[
            RunRecord("lightning-scratch", "lightning", "lightning-scratch", "done", seconds=61.0, cpu_seconds=100.0,
                      overrides={"lr": 0.001}),
            RunRecord("keras/effnetv2b2_imagenet", "keras", "keras/effnetv2b2_imagenet", "skipped",
                      reason="no ImageNet weights file: set weights.keras in the config"),
            RunRecord("broken", "poutyne", "broken", "failed", reason="exit status 1", log="broken/run.log"),
        ],
    )  # fmt: skip
    record.write(runs)
    out = tmp_path / "results.md"
    assert catdog(["report", "--runs", str(runs), "--out", str(out)]) == 0  # --data from the record
    text = out.read_text()
    rows = {row["run"]: row for row in _markdown_rows(text)}
    assert rows["lightning-scratch"]["run time"] == "1 min 01 s"
    assert "overrides: lr=0.001" in rows["lightning-scratch"]["notes"]
    assert rows["poutyne"]["run time"] == "—"
    missing = {row["run"]: row for row in _markdown_rows(text.split("## Runs without results", 1)[1])}
    assert missing["keras/effnetv2b2_imagenet"]["reason"] == "no ImageNet weights file: set weights.keras in the config"
    assert missing["broken"]["status"] == "failed" and missing["broken"]["log"] == "broken/run.log"
    assert "image_size 32, epochs 1, seed 42" in text and "CPU: test" in text and "call: 2 min 05 s" in text
    assert "time of all runs (sum of the run times): 1 min 01 s" in text
    assert "CPU time of all runs (user + system, every process): 1 min 40 s" in text
    assert "## Per-breed errors" in text and "results-breeds.png" in text
    assert f"torch {metadata.version('torch')}" in text and f"timm {metadata.version('timm')}" in text


@pytest.mark.parametrize("recorder", ["keras", "lightning"])
def test_the_dataset_is_found_in_a_runs_own_config(
    predicted_runs: tuple[Path, str], fused_dataset: Path, tmp_path: Path, recorder: str
) -> None:
    runs, hard_breed = predicted_runs
    if recorder == "keras":
        (runs / "keras/custom_cnn/run.json").write_text(json.dumps({"config": {"data": str(fused_dataset)}}))
    else:
        config = runs / "lightning-scratch/lightning_logs/version_0/config.yaml"
        config.parent.mkdir(parents=True)
        config.write_text(f"data:\n  data_dir: {fused_dataset}\n  image_size: 32\n")
    out = tmp_path / "results.md"
    assert catdog(["report", "--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Pass `--data DATASET`" not in text
    assert f"Breeds most often called Cat: {hard_breed} (" in text and (tmp_path / "results-breeds.png").is_file()
