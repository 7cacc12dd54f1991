"""``catdog report``: every run under ``--runs`` as one results table, with breeds, calibration and mistakes.

Reads each run's ``metrics.json`` (schema: :mod:`catdog.metrics`) and, beside it, its ``predictions.csv``:
every figure of the table is recomputed from the predictions with :func:`catdog.metrics.score`, and a
``metrics.json`` that disagrees with its own predictions is named. Writes ``--out`` (Markdown, also
printed) and PNGs beside it: accuracy per run, one confusion matrix per run, a reliability diagram,
accuracy per test dog breed (breeds from ``<data>/manifest.csv``) and a gallery of mistakes per run.
A ``compare.json`` written by ``catdog compare`` under ``--runs`` adds the recipe, device, run times,
per-run overrides and the runs that were skipped or failed. A malformed file, or a run folder with
checkpoints but no ``metrics.json`` (trained, never tested), is named on stderr and skipped.

    catdog report --runs runs --out results.md [--data dataset]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catdog import CatDogError
from catdog.evaluation.report.sections import write_report
from catdog.evaluation.report.tables import (
    COLUMNS,
    Collected,
    Run,
    collect,
    format_duration,
    results_table,
    run_notes,
    to_markdown,
)
from catdog.metrics import METRICS_FILENAME

__all__ = [
    "COLUMNS",
    "Collected",
    "Run",
    "collect",
    "format_duration",
    "main",
    "results_table",
    "run_notes",
    "to_markdown",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catdog report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs", nargs="+", default=["runs"], help="folder(s) holding runs/<name>/metrics.json (default runs)"
    )
    parser.add_argument("--out", type=Path, default=Path("results.md"), help="Markdown file (default results.md)")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the fused dataset the runs were tested on (manifest.csv: breeds; images: gallery); "
        "default: the one recorded by catdog compare",
    )
    args = parser.parse_args(argv)
    found = collect(args.runs)
    if not found.runs:
        for problem in found.problems:
            print(f"catdog report: {problem}", file=sys.stderr)
        raise CatDogError(
            f"no readable {METRICS_FILENAME} under {', '.join(map(str, args.runs))}; "
            "train and test a model first (catdog fit ... then catdog test ...)"
        )
    markdown, plots = write_report(found, args.out, data_dir=args.data)
    for problem in found.problems:
        print(f"catdog report: {problem}", file=sys.stderr)
    print(markdown)
    print(f"\nwrote {args.out} and {len(plots)} plot(s): {', '.join(str(p) for p in plots)}")
    return 0
