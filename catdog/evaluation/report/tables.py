"""The runs of ``catdog report`` and the results table: what :mod:`~catdog.evaluation.report.collect` read, scored.

:func:`collect` reads every ``metrics.json`` under the ``--runs`` folders with, beside it, its ``predictions.csv``
(every figure recomputed with :func:`catdog.metrics.score`) and its ``calibration.json`` when
``catdog calibrate`` wrote one (the test predictions scored again through that map), and the ``compare.json``
records; :func:`results_table` and :func:`to_markdown` make the table. Sections and plots build on these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from catdog import CatDogError
from catdog.calibration import Calibration, calibrated_test_scores
from catdog.evaluation.report.collect import (
    COMPARE_RECORD,
    ComparisonRecord,
    RunRecord,
    published_accuracy,
    read_record,
)
from catdog.metrics import (
    METRICS_FILENAME,
    PREDICTIONS_FILENAME,
    Predictions,
    RunMetrics,
    Scores,
    read_metrics,
    read_predictions,
)

#: Columns of the results table, in order.
COLUMNS = (
    "run",
    "model",
    "framework",
    "pretrained",
    "accuracy",
    "published accuracy",
    "balanced accuracy",
    "F1",
    "AUROC",
    "ECE",
    "test images",
    "parameters",
    "epochs",
    "training time",
    "run time",
    "notes",
)
_NUMBER_COLUMNS = ("accuracy", "published accuracy", "balanced accuracy", "F1", "AUROC", "ECE")
#: Files that mark a folder as a training run (so a missing ``metrics.json`` there is worth naming).
_RUN_MARKERS = ("*.ckpt", "*.keras", "*.pt", "*.pth", "hparams.yaml", "config.yaml")
#: metrics.json and its predictions may differ by float rounding only.
_TOLERANCE = 1e-6


@dataclass
class Run:
    """One tested model: its ``metrics.json``, the scores recomputed from its predictions, its record."""

    name: str
    path: Path
    metrics: RunMetrics
    predictions: Predictions | None = None
    scores: Scores | None = None
    record: RunRecord | None = None
    calibration: Calibration | None = None
    calibrated: Scores | None = None  # the test predictions through the calibration map

    @property
    def folder(self) -> Path:
        return self.path.parent


@dataclass
class Collected:
    """The runs found under the ``--runs`` folders, the comparison records, and the problems met."""

    runs: list[Run] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    records: list[tuple[Path, ComparisonRecord]] = field(default_factory=list)

    def without_results(self) -> list[RunRecord]:
        """Record entries (skipped, failed) with no run in the table."""
        folders = {run.folder.resolve() for run in self.runs}
        return [
            entry
            for root, record in self.records
            for entry in record.runs
            if (root / entry.run_dir).resolve() not in folders
        ]


def _run_name(metrics_path: Path, root: Path) -> str:
    relative = metrics_path.parent.relative_to(root)
    return relative.as_posix() if relative.parts else root.resolve().name


def collect(roots: Sequence[str | Path]) -> Collected:
    """Read every ``metrics.json`` (and its predictions) and ``compare.json`` under ``roots``."""
    found = Collected()
    for root in map(Path, roots):
        if not root.is_dir():
            raise CatDogError(
                f"--runs {root}: folder not found; pass the folder your trainers wrote their runs into "
                "(e.g. runs/, holding runs/<name>/metrics.json)"
            )
        for path in sorted(root.rglob(COMPARE_RECORD)):
            try:
                found.records.append((path.parent, read_record(path)))
            except CatDogError as err:
                found.problems.append(f"skipped {err}")
        metric_files = sorted(root.rglob(METRICS_FILENAME))
        for path in metric_files:
            try:
                run = Run(_run_name(path, root), path, read_metrics(path))
            except CatDogError as err:
                found.problems.append(f"skipped {err}")
                continue
            found.problems += _attach_predictions(run)
            found.runs.append(run)
        for folder in _untested_runs(root, {path.parent for path in metric_files}):
            found.problems.append(
                f"skipped {folder}: no {METRICS_FILENAME} (the run has checkpoints but was never tested; "
                "run `catdog test` on its checkpoint to write one)"
            )
    entries = {(root / e.run_dir).resolve(): e for root, record in found.records for e in record.runs}
    for run in found.runs:
        run.record = entries.get(run.folder.resolve())
    return found


def _attach_predictions(run: Run) -> list[str]:
    """Read the run's ``predictions.csv`` and score it; returns the problems (none when all agrees)."""
    path = run.folder / (run.metrics.predictions or PREDICTIONS_FILENAME)
    if not path.is_file():
        return [f"{run.name}: no {path.name} beside {run.path}; its row shows metrics.json as written (not recomputed)"]
    try:
        run.predictions = read_predictions(path)
        run.scores = run.predictions.score()
    except CatDogError as err:
        return [f"{run.name}: {err}; its row shows metrics.json as written (not recomputed)"]
    try:
        found = calibrated_test_scores(run.folder, run.predictions)
    except CatDogError as err:
        found, problems = None, [f"{run.name}: {err}; shown uncalibrated only"]
    else:
        problems = []
    if found is not None:
        run.calibration, run.calibrated = found
    return problems + _disagreements(run, path)


def _disagreements(run: Run, path: Path) -> list[str]:
    """Where the run's ``metrics.json`` differs from its recomputed scores."""
    written = run.metrics
    differences = [
        f"{key} {mine} (predictions give {theirs})"
        for key, mine, theirs in (
            ("accuracy", written.accuracy, run.scores.accuracy),
            ("F1", written.f1, run.scores.f1),
            ("AUROC", written.auroc, run.scores.auroc),
        )
        if not _same(mine, theirs)
    ]
    if written.confusion_matrix != run.scores.confusion_matrix:
        differences.append(
            f"confusion matrix {written.confusion_matrix} (predictions give {run.scores.confusion_matrix})"
        )
    if differences:
        listed = "; ".join(differences)
        return [f"{run.path} disagrees with {path.name}: {listed}; the report shows the recomputed figures"]
    return []


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=0.0, abs_tol=_TOLERANCE)


def _untested_runs(root: Path, tested: set[Path]) -> list[Path]:
    """Folders with checkpoints or run configs but no ``metrics.json`` in, above or below them."""
    candidates = set()
    for pattern in _RUN_MARKERS:
        for marker in root.rglob(pattern):
            folder = marker.parent
            candidates.add(folder.parent if folder.name == "checkpoints" and folder != root else folder)
    untested = [c for c in candidates if not any(c == d or d in c.parents or c in d.parents for d in tested)]
    # Name each untested run once: its topmost folder.
    return sorted(c for c in untested if not any(other in c.parents for other in untested))


def format_duration(seconds: float | None) -> str:
    """``45.3 s``, ``20 min 34 s``, ``2 h 03 min``; ``—`` when unknown."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "—"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def run_notes(run: Run) -> list[str]:
    """Short flags for the table's notes column."""
    notes = []
    if run.scores is None:
        notes.append("not recomputed (no predictions.csv)")
    elif run.scores.collapse_warning():
        notes.append("**collapsed to one class** (see warnings)")
    if run.metrics.pretrained:
        notes.append("ImageNet-pretrained (see caveat)")
    if run.record and run.record.overrides:
        notes.append("overrides: " + ", ".join(f"{k}={v}" for k, v in run.record.overrides.items()))
    return notes


def results_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The results table: one row per run, best accuracy first; figures recomputed from predictions."""
    rows = []
    for run in runs:
        m, s = run.metrics, run.scores
        rows.append(
            {
                "run": run.name,
                "model": m.model,
                "framework": m.framework,
                "pretrained": "yes" if m.pretrained else "no",
                "accuracy": s.accuracy if s else m.accuracy,
                "published accuracy": published_accuracy(m),
                "balanced accuracy": s.balanced_accuracy if s else m.balanced_accuracy,
                "F1": s.f1 if s else m.f1,
                "AUROC": s.auroc if s else m.auroc,
                "ECE": s.ece if s else m.ece,
                "test images": s.n if s else (m.n_test or sum(map(sum, m.confusion_matrix))),
                "parameters": int(m.num_params),
                "epochs": int(m.epochs),
                "training time": float(m.train_seconds),
                "run time": run.record.seconds if run.record else None,
                "notes": "; ".join(run_notes(run)),
            }
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in (*_NUMBER_COLUMNS, "run time"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    return table.sort_values(["accuracy", "run"], ascending=[False, True], kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown, numbers rounded for reading (``—`` where there is none)."""
    shown = table.copy()
    for column in _NUMBER_COLUMNS:
        shown[column] = shown[column].map(lambda v: "—" if pd.isna(v) else f"{v:.4f}")
    shown["published accuracy"] = table["published accuracy"].map(lambda v: "—" if pd.isna(v) else f"{v:.2f}")
    shown["parameters"] = shown["parameters"].map(lambda v: f"{v:,}")
    for column in ("training time", "run time"):
        shown[column] = table[column].map(format_duration)
    aligns = ["left"] * 4 + ["right"] * 11 + ["left"]
    return shown.to_markdown(index=False, colalign=aligns, disable_numparse=True)
