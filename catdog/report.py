"""``catdog report``: every ``metrics.json`` under ``--runs`` as one results table, plus plots.

Reads the files written by the Lightning, Poutyne and Keras trainers (schema: :mod:`catdog.metrics`),
writes the table as Markdown to ``--out`` (and prints it), and writes PNG plots next to it: an accuracy
bar chart and one confusion matrix per run. A malformed file, or a run folder that has checkpoints
but no ``metrics.json`` (trained, never tested), is named on stderr and skipped.

    catdog report --runs runs --out results.md
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from catdog import DISPLAY_NAMES, CatDogError
from catdog.metrics import METRICS_FILENAME, RunMetrics, read_metrics

#: Columns of the results table, in order.
COLUMNS = (
    "run",
    "model",
    "framework",
    "pretrained",
    "accuracy",
    "F1",
    "AUROC",
    "parameters",
    "epochs",
    "training time",
)
#: Files that mark a folder as a training run (so a missing ``metrics.json`` there is worth naming).
_RUN_MARKERS = ("*.ckpt", "*.keras", "*.pt", "*.pth", "hparams.yaml", "config.yaml")
_FRAMEWORK_COLOURS = {"lightning": "#792ee5", "poutyne": "#e5832e", "keras": "#d00000"}


@dataclass
class Run:
    """One tested model: where its ``metrics.json`` is and what it says."""

    name: str
    path: Path
    metrics: RunMetrics


@dataclass
class Collected:
    """The runs found under the ``--runs`` folders, and the problems met on the way."""

    runs: list[Run] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _run_name(metrics_path: Path, root: Path) -> str:
    relative = metrics_path.parent.relative_to(root)
    return relative.as_posix() if relative.parts else root.resolve().name


def collect(roots: Sequence[str | Path]) -> Collected:
    """Read every ``metrics.json`` under ``roots``; malformed ones and tested-never runs go to ``problems``."""
    found = Collected()
    for root in map(Path, roots):
        if not root.is_dir():
            raise CatDogError(
                f"--runs {root}: folder not found; pass the folder your trainers wrote their runs into "
                "(e.g. runs/, holding runs/<name>/metrics.json)"
            )
        metric_files = sorted(root.rglob(METRICS_FILENAME))
        for path in metric_files:
            try:
                metrics = read_metrics(path)
            except CatDogError as err:
                found.problems.append(f"skipped {err}")
                continue
            found.runs.append(Run(_run_name(path, root), path, metrics))
        for folder in _untested_runs(root, {path.parent for path in metric_files}):
            found.problems.append(
                f"skipped {folder}: no {METRICS_FILENAME} (the run has checkpoints but was never tested; "
                "run `catdog test` on its checkpoint to write one)"
            )
    return found


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


def _format_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def results_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The results table: one row per run, best accuracy first."""
    rows = [
        {
            "run": run.name,
            "model": run.metrics.model,
            "framework": run.metrics.framework,
            "pretrained": "yes" if run.metrics.pretrained else "no",
            "accuracy": float(run.metrics.accuracy),
            "F1": float(run.metrics.f1),
            "AUROC": float(run.metrics.auroc),
            "parameters": int(run.metrics.num_params),
            "epochs": int(run.metrics.epochs),
            "training time": float(run.metrics.train_seconds),
        }
        for run in runs
    ]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.sort_values(["accuracy", "run"], ascending=[False, True], kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown, numbers rounded for reading."""
    shown = table.copy()
    for column in ("accuracy", "F1", "AUROC"):
        shown[column] = shown[column].map(lambda v: f"{v:.4f}")
    shown["parameters"] = shown["parameters"].map(lambda v: f"{v:,}")
    shown["training time"] = shown["training time"].map(_format_duration)
    return shown.to_markdown(index=False, colalign=["left"] * 4 + ["right"] * 6, disable_numparse=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"


def plot_accuracy(table: pd.DataFrame, path: Path) -> Path:
    """Horizontal bar chart of test accuracy per run, coloured by framework."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ordered = table.iloc[::-1]  # best at the top
    fig = Figure(figsize=(8, 1.2 + 0.45 * len(ordered)), layout="constrained")
    ax = fig.subplots()
    colours = [_FRAMEWORK_COLOURS.get(fw, "#555555") for fw in ordered["framework"]]
    labels = [
        f"{run}\n{model}, {'pretrained' if p == 'yes' else 'scratch'}"
        for run, model, p in zip(ordered["run"], ordered["model"], ordered["pretrained"], strict=True)
    ]
    bars = ax.barh(range(len(ordered)), ordered["accuracy"], color=colours)
    ax.set_yticks(range(len(ordered)), labels, fontsize=8)
    ax.bar_label(bars, labels=[f"{v:.2%}" for v in ordered["accuracy"]], padding=3, fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("test accuracy")
    ax.set_title("Cat vs dog: test accuracy by run")
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.grid(axis="x", alpha=0.3)
    frameworks = list(dict.fromkeys(ordered["framework"]))
    ax.legend(
        handles=[Patch(color=_FRAMEWORK_COLOURS.get(fw, "#555555"), label=fw) for fw in frameworks],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        title="framework",
        title_fontsize=8,
    )
    fig.savefig(path, dpi=110)
    return path


def plot_confusion(run: Run, path: Path) -> Path:
    """The run's 2x2 confusion matrix: counts and row percentages, rows = true class."""
    import numpy as np
    from matplotlib.figure import Figure

    matrix = np.asarray(run.metrics.confusion_matrix, dtype=float)
    row_sums = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, row_sums, out=np.zeros_like(matrix), where=row_sums > 0)
    fig = Figure(figsize=(4.2, 3.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if share[i, j] > 0.5 else "black"
        ax.text(j, i, f"{int(count)}\n{share[i, j]:.1%}", ha="center", va="center", color=colour, fontsize=11)
    ax.set_xticks(range(len(DISPLAY_NAMES)), DISPLAY_NAMES)
    ax.set_yticks(range(len(DISPLAY_NAMES)), DISPLAY_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    kind = "pretrained" if run.metrics.pretrained else "scratch"
    ax.set_title(f"{run.name}\n{run.metrics.framework}, {kind}, accuracy {run.metrics.accuracy:.2%}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.savefig(path, dpi=110)
    return path


def write_report(runs: Sequence[Run], out: Path) -> tuple[str, list[Path]]:
    """Write the Markdown table to ``out`` and the plots beside it; returns (table Markdown, PNG paths)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table = results_table(runs)
    markdown = to_markdown(table)
    plots = [plot_accuracy(table, out.parent / f"{out.stem}-accuracy.png")]
    by_name = {run.name: run for run in runs}
    for name in table["run"]:
        plots.append(plot_confusion(by_name[name], out.parent / f"{out.stem}-confusion-{_slug(name)}.png"))
    images = "\n".join(f"![{p.stem}]({p.name})" for p in plots)
    out.write_text(f"# Results\n\n{markdown}\n\n## Plots\n\n{images}\n")
    return markdown, plots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catdog report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs", nargs="+", default=["runs"], help="folder(s) holding runs/<name>/metrics.json (default runs)"
    )
    parser.add_argument("--out", type=Path, default=Path("results.md"), help="Markdown file (default results.md)")
    args = parser.parse_args(argv)
    found = collect(args.runs)
    for problem in found.problems:
        print(f"catdog report: {problem}", file=sys.stderr)
    if not found.runs:
        raise CatDogError(
            f"no readable {METRICS_FILENAME} under {', '.join(map(str, args.runs))}; "
            "train and test a model first (catdog fit ... then catdog test ...)"
        )
    markdown, plots = write_report(found.runs, args.out)
    print(markdown)
    print(f"\nwrote {args.out} and {len(plots)} plot(s): {', '.join(str(p) for p in plots)}")
    return 0
