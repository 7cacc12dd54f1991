"""``catdog report``: the results table, plots, and how it treats bad or missing metrics files; the mistakes and
breeds figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import markdown_rows

from catdog.cli import main as catdog
from catdog.evaluation.report.collect import (
    breed_table,
    worst_mistakes,
)
from catdog.evaluation.report.command import COLUMNS
from catdog.metrics import (
    Predictions,
    RunMetrics,
    write_metrics,
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
    rows = markdown_rows(out.read_text())
    assert rows == markdown_rows(printed), "the printed table is the one written to --out"
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
    rows = markdown_rows(out.read_text())
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
