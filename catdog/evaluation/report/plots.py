"""The report's PNG plots: accuracy per run, confusion matrices, reliability diagram, breeds, mistakes.

matplotlib's object API (``Figure``), no pyplot state, so plots can be drawn from any thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from catdog import DISPLAY_NAMES
from catdog.evaluation.report.collect import Mistake
from catdog.metrics import ECE_BINS, Predictions, reliability_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FRAMEWORK_COLOURS = {"lightning": "#792ee5", "poutyne": "#e5832e", "keras": "#d00000"}
_DPI = 110
#: Frame colour of a gallery thumbnail by true class (cat, dog).
_LABEL_COLOURS = ("#1f77b4", "#d62728")


def plot_accuracy(table: pd.DataFrame, path: Path) -> Path:
    """Horizontal bar chart of test accuracy per run, coloured by framework; published figures as ticks."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ordered = table.iloc[::-1]  # best at the top
    fig = Figure(figsize=(8, 1.4 + 0.5 * len(ordered)), layout="constrained")
    ax = fig.subplots()
    colours = [FRAMEWORK_COLOURS.get(fw, "#555555") for fw in ordered["framework"]]
    labels = [
        f"{run}\n{model}, {'pretrained' if p == 'yes' else 'scratch'}"
        for run, model, p in zip(ordered["run"], ordered["model"], ordered["pretrained"], strict=True)
    ]
    rows = np.arange(len(ordered))
    bars = ax.barh(rows, ordered["accuracy"], color=colours)
    ax.bar_label(bars, labels=[f"{v:.2%}" for v in ordered["accuracy"]], padding=3, fontsize=8)
    published = ordered["published accuracy"].to_numpy(dtype=float)
    shown = ~np.isnan(published)
    ax.scatter(published[shown], rows[shown], marker="|", s=400, color="black", zorder=3)
    ax.set_yticks(rows, labels, fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("test accuracy")
    ax.set_title("Cat vs dog: test accuracy by run")
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.grid(axis="x", alpha=0.3)
    frameworks = dict.fromkeys(ordered["framework"])
    handles = [Patch(color=FRAMEWORK_COLOURS.get(fw, "#555555"), label=fw) for fw in frameworks]
    if shown.any():
        handles.append(Line2D([], [], marker="|", markersize=14, linestyle="", color="black", label="published"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.savefig(path, dpi=_DPI)
    return path


def plot_confusion(name: str, subtitle: str, matrix: Sequence[Sequence[int]], path: Path) -> Path:
    """A 2x2 confusion matrix: counts and row percentages, rows = true class."""
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=float)
    row_sums = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    fig = Figure(figsize=(4.2, 3.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(counts):
        colour = "white" if share[i, j] > 0.5 else "black"
        ax.text(j, i, f"{int(count)}\n{share[i, j]:.1%}", ha="center", va="center", color=colour, fontsize=11)
    ax.set_xticks(range(len(DISPLAY_NAMES)), DISPLAY_NAMES)
    ax.set_yticks(range(len(DISPLAY_NAMES)), DISPLAY_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{name}\n{subtitle}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.savefig(path, dpi=_DPI)
    return path


def plot_reliability(
    predictions: dict[str, Predictions],
    eces: dict[str, float],
    path: Path,
    calibrated: dict[str, tuple[Predictions, float]] | None = None,
) -> Path:
    """One reliability diagram for every run: accuracy against confidence of the predicted class per bin; a run
    in ``calibrated`` (its test predictions through its calibration map, and their ECE) gets a second, dotted
    curve in the same colour."""
    from matplotlib.figure import Figure

    calibrated = calibrated or {}
    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.subplots()
    ax.plot([0.5, 1.0], [0.5, 1.0], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    cmap = _run_colours(len(predictions))
    styles = ("-", "--", "-.", (0, (5, 1)))  # runs with identical predictions overlap: the dashes keep both visible
    for index, ((name, preds), colour) in enumerate(zip(predictions.items(), cmap, strict=True)):
        _reliability_curve(ax, preds, colour, styles[index % len(styles)], f"{name} (ECE {eces[name]:.3f})")
        if name in calibrated:
            after, ece = calibrated[name]
            _reliability_curve(ax, after, colour, ":", f"{name}, calibrated (ECE {ece:.3f})", hollow=True)
    ax.set_xlim(0.48, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("confidence of the predicted class (bin mean)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(f"Reliability diagram ({ECE_BINS} equal-width bins; marker area ~ images in the bin)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.savefig(path, dpi=_DPI)
    return path


def _reliability_curve(ax: Any, preds: Predictions, colour: Any, style: Any, label: str, hollow: bool = False) -> None:
    curve = reliability_curve(preds.labels, preds.p_dog)
    confidence, accuracy, count = (np.array(column) for column in zip(*curve, strict=True))
    sizes = 20 + 180 * count / count.max()
    ax.plot(confidence, accuracy, color=colour, linewidth=1.4, linestyle=style, label=label)
    if hollow:
        ax.scatter(confidence, accuracy, s=sizes, facecolors="none", edgecolors=colour, linewidths=1.0)
    else:
        ax.scatter(confidence, accuracy, s=sizes, color=colour, alpha=0.6, edgecolors="white", linewidths=0.5)


#: The per-breed heatmap's title, in two parts: on one line when the figure is wide enough, else on two.
BREEDS_TITLE = ("Test dogs called Dog, per breed", "(breeds unseen in training; worst first)")
_BREEDS_TITLE_SIZE = 9


def plot_breeds(table: pd.DataFrame, path: Path) -> Path:
    """Heatmap of accuracy per test dog breed (rows, worst first) and run (columns), as a PNG."""
    breeds_figure(table).savefig(path, dpi=_DPI)
    return path


def breeds_figure(table: pd.DataFrame) -> Figure:
    """The figure of :func:`plot_breeds`: one column per run, its title above all (wrapped when narrow)."""
    from matplotlib.figure import Figure

    values = table.drop(columns="images").to_numpy(dtype=float)
    runs = list(table.columns.drop("images"))
    width = 2.6 + 1.1 * len(runs)
    fig = Figure(figsize=(width, 1.6 + 0.36 * len(table)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        text = "—" if np.isnan(value) else f"{value:.0%}"
        colour = "white" if not np.isnan(value) and (value < 0.2 or value > 0.85) else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(runs)), runs, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(table)), [f"{breed} ({n})" for breed, n in table["images"].items()], fontsize=8)
    # Above the whole figure, not the axes: the breed names push the axes right, and a title centred on a
    # narrow axes (one or two runs) runs off the figure's right edge.
    one_line = " ".join(BREEDS_TITLE)
    fits = _text_width_inches(one_line, _BREEDS_TITLE_SIZE) <= width - 0.5
    fig.suptitle(one_line if fits else "\n".join(BREEDS_TITLE), fontsize=_BREEDS_TITLE_SIZE)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="share called Dog")
    return fig


def _text_width_inches(text: str, fontsize: float) -> float:
    """Width of ``text`` on one line in matplotlib's default font at ``fontsize`` points."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    width, _, _ = TextToPath().get_text_width_height_descent(text, FontProperties(size=fontsize), ismath=False)
    return width / 72


def plot_mistakes(
    name: str, mistakes: Sequence[Mistake], wrong: int, total: int, data_dir: str | os.PathLike[str], path: Path
) -> Path:
    """A gallery of the most confident wrong test images: thumbnail, true label, P(dog), breed.

    Drawn with PIL (a grid of thumbnails with captions): a tenth of the time matplotlib takes.
    """
    from PIL import Image, ImageDraw, ImageFont

    cell, thumb, caption, margin, columns = 184, 160, 52, 8, min(4, len(mistakes))
    rows = -(-len(mistakes) // columns)
    title_height = 34
    canvas = Image.new("RGB", (columns * cell + margin, title_height + rows * (thumb + caption + margin)), "white")
    draw = ImageDraw.Draw(canvas)
    font, title_font = ImageFont.load_default(size=12), ImageFont.load_default(size=15)
    draw.text((margin, 8), f"{name}: the {len(mistakes)} most confident mistakes ({wrong} wrong of {total})",
              fill="black", font=title_font)  # fmt: skip
    for index, mistake in enumerate(mistakes):
        x = margin + (index % columns) * cell
        y = title_height + (index // columns) * (thumb + caption + margin)
        draw.rectangle((x, y, x + thumb + 3, y + thumb + 3), outline=_LABEL_COLOURS[mistake.label], width=2)
        try:
            with Image.open(Path(data_dir) / mistake.file) as image:
                image = image.convert("RGB")
                scale = thumb / max(image.size)  # small images are enlarged too
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
                canvas.paste(image, (x + 2 + (thumb - image.width) // 2, y + 2 + (thumb - image.height) // 2))
        except OSError:
            draw.text((x + 30, y + thumb // 2), "image not found", fill="grey", font=font)
        lines = [f"true {DISPLAY_NAMES[mistake.label]}, P(dog) {mistake.p_dog:.3f}", mistake.breed or "(cat)",
                 Path(mistake.file).name[:26]]  # fmt: skip
        for line_no, line in enumerate(lines):
            draw.text((x, y + thumb + 6 + 15 * line_no), line, fill="black" if line_no == 0 else "#444444", font=font)
    canvas.save(path)
    return path


def _run_colours(count: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(count)]
