"""The sections of ``results.md``: table, warnings, missing runs, breeds, calibration, mistakes, setup.

Each section is a function returning its Markdown and the PNGs it drew; :func:`write_report` puts them
together in the order a reader asks the questions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from catdog import CatDogError
from catdog.evaluation.report.collect import (
    ComparisonRecord,
    breed_table,
    breeds_of_test_dogs,
    describe_device,
    most_called_cat,
    package_versions,
    recorded_data_dir,
    worst_mistakes,
)
from catdog.evaluation.report.plots import plot_accuracy, plot_breeds, plot_confusion, plot_mistakes, plot_reliability
from catdog.evaluation.report.tables import Collected, Run, format_duration, results_table, to_markdown
from catdog.metrics import Predictions

PRETRAINED_CAVEAT = (
    "Rows marked ImageNet-pretrained start from ImageNet weights. The dogs of Kaggle's Dog Breed Identification "
    "are ImageNet images (its 120 breeds are ImageNet classes), so such a network has already seen the test "
    'dogs\' source distribution, if not the very images: its "unseen breeds" are not unseen to it, and its '
    "lead over the scratch rows overstates how it would do on truly new dogs."
)
GALLERY_SIZE = 12
#: Rows of the per-breed table in view; the rest are folded (the real data has 34 test breeds).
BREED_ROWS_SHOWN = 12


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"


def _images(paths: list[Path]) -> str:
    return "\n".join(f"![{p.stem}]({p.name})" for p in paths)


def write_report(found: Collected, out: Path, data_dir: str | os.PathLike[str] | None = None) -> tuple[str, list[Path]]:
    """Write ``out`` (Markdown) and its PNGs beside it; returns (results table Markdown, PNG paths)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = found.records[0][1] if found.records else None
    if data_dir is None and record is not None:
        data_dir = record.data
    if data_dir is None:
        data_dir = recorded_data_dir([run.folder for run in found.runs])
    table = results_table(found.runs)
    markdown = to_markdown(table)
    prefix = out.parent / out.stem
    scored = {run.name: run for run in sorted(found.runs, key=lambda r: list(table["run"]).index(r.name))}
    breeds, breed_note = _load_breeds(data_dir)
    sections: list[str] = []
    plots: list[Path] = []
    for text, pngs in (
        _warnings(found, table),
        _without_results(found),
        _breed_section(scored, breeds, breed_note, prefix),
        _calibration_section(scored, prefix),
        _mistakes_section(scored, breeds, data_dir, prefix),
        _setup_section(found, record),
        _plots_section(table, scored, prefix),
    ):
        if text:
            sections.append(text)
        plots += pngs
    intro = (
        "Every figure is recomputed from each run's `predictions.csv` (test split: file, true label, P(dog)) "
        "with `catdog.metrics.score`; a prediction is Dog when P(dog) > 0.5. *Published accuracy* is the "
        "original work's test accuracy for the same network and weights: its PyTorch EfficientNetV2-B2 "
        "(pretrained 0.98, scratch 0.86) beside the Lightning and Poutyne rows, its Keras models beside theirs."
    )
    out.write_text(f"# Results\n\n{intro}\n\n{markdown}\n\n" + "\n\n".join(sections) + "\n")
    return markdown, plots


def _warnings(found: Collected, table: pd.DataFrame) -> tuple[str, list[Path]]:
    lines = []
    for run in found.runs:
        warning = run.scores.collapse_warning() if run.scores else None
        if warning:
            lines.append(f"- **{run.name}**: {warning}.")
    lines += [f"- {problem}" for problem in found.problems]
    text = "## Warnings\n\n" + "\n".join(lines) if lines else ""
    if (table["pretrained"] == "yes").any():
        text = (text + "\n\n" if text else "") + f"## Caveat on pretrained rows\n\n{PRETRAINED_CAVEAT}"
    return text, []


def _without_results(found: Collected) -> tuple[str, list[Path]]:
    missing = found.without_results()
    if not missing:
        return "", []
    rows = [
        {"run": e.name, "trainer": e.trainer, "status": e.status, "reason": e.reason or "—", "log": e.log or "—"}
        for e in missing
    ]
    table = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
    return f"## Runs without results\n\n{table}", []


def _load_breeds(data_dir: str | os.PathLike[str] | None) -> tuple[dict[str, str], str]:
    if data_dir is None:
        return {}, "Pass `--data DATASET` (the folder written by `catdog fuse`) for the per-breed errors."
    try:
        return breeds_of_test_dogs(data_dir), ""
    except CatDogError as err:
        return {}, f"No per-breed errors: {err}."


def _breed_section(runs: dict[str, Run], breeds: dict[str, str], note: str, prefix: Path) -> tuple[str, list[Path]]:
    predictions = {name: run.predictions for name, run in runs.items() if run.predictions is not None}
    if not breeds or not predictions:
        return f"## Per-breed errors\n\n{note or 'No test dogs with a breed in manifest.csv.'}", []
    table = breed_table(predictions, breeds)
    shown = table.copy()
    for name in predictions:
        shown[name] = table[name].map(lambda v: "—" if pd.isna(v) else f"{v:.2f}")
    called = most_called_cat(table)
    worst = ", ".join(f"{breed} ({share:.0%} of its images, mean over runs)" for breed, share in called)
    png = plot_breeds(table, prefix.with_name(f"{prefix.name}-breeds.png"))
    text = (
        "## Per-breed errors\n\n"
        f"Test dogs by breed ({len(table)} breeds, {int(table['images'].sum())} images; every test breed is "
        "unseen in training): the share of each breed's images each run calls Dog, worst breed first.\n\n"
        f"{_long_table(shown.reset_index(), BREED_ROWS_SHOWN, 'breeds')}\n\n"
        f"Breeds most often called Cat: {worst or 'none (every test dog is called Dog by every run)'}.\n\n"
        f"{_images([png])}"
    )
    return text, [png]


def _long_table(frame: pd.DataFrame, shown: int, what: str) -> str:
    """A markdown table; past ``shown`` rows only the first ones stay in view, the whole table folded below them
    (34 test breeds of the real data make a table longer than a screen)."""
    if len(frame) <= shown:
        return frame.to_markdown(index=False, disable_numparse=True)
    head = frame.head(shown).to_markdown(index=False, disable_numparse=True)
    whole = frame.to_markdown(index=False, disable_numparse=True)
    return f"{head}\n\n<details><summary>All {len(frame)} {what}</summary>\n\n{whole}\n\n</details>"


def _calibration_section(runs: dict[str, Run], prefix: Path) -> tuple[str, list[Path]]:
    scored = {name: run for name, run in runs.items() if run.scores is not None}
    if not scored:
        return "", []
    rows = [_calibration_row(name, run) for name, run in sorted(scored.items(), key=lambda item: item[1].scores.ece)]
    calibrated = {
        name: (Predictions(run.predictions.files, run.predictions.labels, run.calibration.map.apply(
            run.predictions.p_dog)), run.calibrated.ece)
        for name, run in scored.items() if run.calibration is not None and run.calibrated is not None
    }  # fmt: skip
    png = plot_reliability(
        {name: run.predictions for name, run in scored.items()},
        {name: run.scores.ece for name, run in scored.items()},
        prefix.with_name(f"{prefix.name}-reliability.png"),
        calibrated,
    )
    text = (
        "## Calibration\n\n"
        "Expected calibration error (10 equal-width bins of the predicted class's probability; 0 is perfect), "
        "log loss (NLL) and Brier score of the test predictions, best ECE first. A mean confidence far above the "
        "accuracy means an over-confident model. Runs with a `calibration.json` (`catdog calibrate`: a map fitted "
        "on the validation predictions only) are scored again through it (*calibrated* columns, dotted curves): "
        "temperature scaling keeps every decision, so accuracy cannot move; Platt scaling moves the threshold.\n\n"
        f"{pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)}\n\n{_images([png])}"
    )
    return text, [png]


def _calibration_row(name: str, run: Run) -> dict[str, str]:
    before, after = run.scores, run.calibrated
    row = {
        "run": name,
        "ECE": f"{before.ece:.4f}",
        "NLL": f"{before.nll:.4f}",
        "Brier": f"{before.brier:.4f}",
        "accuracy": f"{before.accuracy:.4f}",
        "mean confidence": f"{_mean_confidence(run):.4f}",
        "calibration": run.calibration.map.describe() if run.calibration else "—",
    }
    for key in ("ece", "nll", "brier", "accuracy"):
        label = {"ece": "ECE", "nll": "NLL", "brier": "Brier"}.get(key, key)
        row[f"{label} calibrated"] = f"{getattr(after, key):.4f}" if after is not None else "—"
    return row


def _mean_confidence(run: Run) -> float:
    p_dog = run.predictions.p_dog
    return float(((p_dog > 0.5) * p_dog + (p_dog <= 0.5) * (1.0 - p_dog)).mean())


def _mistakes_section(
    runs: dict[str, Run], breeds: dict[str, str], data_dir: str | os.PathLike[str] | None, prefix: Path
) -> tuple[str, list[Path]]:
    if data_dir is None:
        return "## Mistakes\n\nPass `--data DATASET` for a gallery of each run's most confident mistakes.", []
    lines, pngs = [], []
    for name, run in runs.items():
        if run.predictions is None:
            continue
        mistakes, wrong = worst_mistakes(run.predictions, breeds, GALLERY_SIZE)
        if not mistakes:
            lines.append(f"- **{name}**: no wrong test prediction.")
            continue
        png = plot_mistakes(
            name, mistakes, wrong, len(run.predictions.files), data_dir,
            prefix.with_name(f"{prefix.name}-mistakes-{_slug(name)}.png"),
        )  # fmt: skip
        pngs.append(png)
        lines.append(f"- **{name}**: {wrong} wrong of {len(run.predictions.files)}.\n\n  {_images([png])}")
    if not lines:
        return "", []
    intro = "The most confident wrong test images of each run (true label, P(dog), breed for dogs):"
    return "## Mistakes\n\n" + intro + "\n\n" + "\n".join(lines), pngs


def _setup_section(found: Collected, record: ComparisonRecord | None) -> tuple[str, list[Path]]:
    versions = package_versions()
    lines = ["## Setup", ""]
    if record is not None:
        recipe = ", ".join(f"{key} {value}" for key, value in record.recipe.items())
        lines += [
            f"- data: `{record.data}`; validation files: `{record.val_files}` (the same list for every run)",
            f"- recipe: {recipe}",
            f"- device: {record.device}",
        ]
        run_seconds = [e.seconds for e in record.runs if e.seconds is not None]
        if run_seconds:
            lines.append(f"- time of all runs (sum of the run times): {format_duration(sum(run_seconds))}")
        cpu_seconds = [e.cpu_seconds for e in record.runs if e.cpu_seconds is not None]
        if cpu_seconds:
            lines.append(f"- CPU time of all runs (user + system, every process): {format_duration(sum(cpu_seconds))}")
        if record.total_seconds is not None:
            lines.append(f"- last `catdog compare` call: {format_duration(record.total_seconds)} (runs found complete "
                         "are not rerun)")  # fmt: skip
        devices = [e for e in record.runs if e.device and e.device != "default"]
        if devices:
            lines.append("- devices of the runs: " + ", ".join(f"{e.name} on {e.device}" for e in devices))
        overrides = [e for e in record.runs if e.overrides]
        for entry in overrides:
            lines.append(f"- overrides of {entry.name}: " + ", ".join(f"{k} {v}" for k, v in entry.overrides.items()))
    else:
        lines += [
            "- recipe: not recorded (these runs were not made by `catdog compare`); epochs per run are in the table",
            f"- device of this report: {describe_device()}",
        ]
    lines.append("- versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    return "\n".join(lines), []


def _plots_section(table: pd.DataFrame, runs: dict[str, Run], prefix: Path) -> tuple[str, list[Path]]:
    pngs = [plot_accuracy(table, prefix.with_name(f"{prefix.name}-accuracy.png"))]
    for name, run in runs.items():
        matrix = run.scores.confusion_matrix if run.scores else run.metrics.confusion_matrix
        accuracy = run.scores.accuracy if run.scores else run.metrics.accuracy
        kind = "pretrained" if run.metrics.pretrained else "scratch"
        subtitle = f"{run.metrics.framework}, {kind}, accuracy {accuracy:.2%}"
        path = prefix.with_name(f"{prefix.name}-confusion-{_slug(name)}.png")
        pngs.append(plot_confusion(name, subtitle, matrix, path))
    return f"## Accuracy and confusion matrices\n\n{_images(pngs)}", pngs
