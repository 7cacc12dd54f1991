"""``catdog report``: the results table, plots, and how it treats bad or missing metrics files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from catdog.cli import main as catdog
from catdog.metrics import RunMetrics, write_metrics
from catdog.report import COLUMNS

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
    lines = [line for line in text.splitlines() if line.startswith("|")]
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
