"""What the report reads besides ``metrics.json``: published figures, breeds, mistakes, the comparison record.

Torch-free and TensorFlow-free (numpy, pandas, the standard library). ``catdog compare`` writes the
comparison record (:data:`COMPARE_RECORD`, ``<out>/compare.json``: the shared recipe, the device, and one
entry per run with its status, reason, log, time and overrides); ``catdog report`` reads it when it finds
one under ``--runs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from catdog import CatDogError
from catdog.metrics import THRESHOLD, Predictions, RunMetrics

COMPARE_RECORD = "compare.json"
MANIFEST = "manifest.csv"
#: The original work's published test accuracy: (framework family, model, pretrained) -> accuracy.
PUBLISHED_ACCURACY: dict[tuple[str, str, bool], float] = {
    ("torch", "tf_efficientnetv2_b2", True): 0.98,
    ("torch", "tf_efficientnetv2_b2", False): 0.86,
    ("keras", "custom_cnn", False): 0.68,
    ("keras", "effnetv2b2_imagenet", True): 0.59,
    ("keras", "effnetv2b2_scratch", False): 0.40,
    ("keras", "vgg16", False): 0.49,
}
#: Packages whose versions the report lists (the first installed distribution name of each wins).
VERSION_PACKAGES: dict[str, tuple[str, ...]] = {
    "python": (),
    "catdog": ("catdog",),
    "torch": ("torch",),
    "timm": ("timm",),
    "lightning": ("lightning",),
    "poutyne": ("poutyne",),
    "keras": ("keras",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu"),
    "numpy": ("numpy",),
}


def published_accuracy(metrics: RunMetrics) -> float | None:
    """The original work's accuracy for the same model, framework family and weights, if it published one."""
    family = "keras" if metrics.framework == "keras" else "torch"
    return PUBLISHED_ACCURACY.get((family, metrics.model, bool(metrics.pretrained)))


# -- the comparison record ------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One run of a comparison: what happened to it.

    ``status`` is ``done`` (trained and tested now), ``complete`` (outputs found, not rerun), ``failed``
    (``reason`` and ``log`` say why) or ``skipped`` (e.g. missing weights; ``reason`` says what to do).
    ``run_dir`` is relative to the record's folder; ``seconds`` is wall time, ``cpu_seconds`` the CPU time
    (user + system) of the run's processes; ``device`` where it ran (``catdog compare --devices``: a GPU or a CPU
    slot; ``default``: the environment as it was).
    """

    name: str
    trainer: str
    run_dir: str
    status: str
    reason: str = ""
    log: str | None = None
    seconds: float | None = None
    cpu_seconds: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    device: str | None = None


@dataclass
class ComparisonRecord:
    """Everything ``catdog compare`` knows about its runs, saved as ``<out>/compare.json``."""

    data: str
    recipe: dict[str, Any]
    device: str
    val_files: str
    runs: list[RunRecord] = field(default_factory=list)
    total_seconds: float | None = None

    def write(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / COMPARE_RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    def entry(self, name: str) -> RunRecord | None:
        return next((run for run in self.runs if run.name == name), None)


def read_record(path: str | os.PathLike[str]) -> ComparisonRecord:
    """Read a ``compare.json``; errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        runs = [RunRecord(**run) for run in data.pop("runs", [])]
        return ComparisonRecord(**data, runs=runs)
    except (OSError, json.JSONDecodeError, TypeError, AttributeError) as err:
        raise CatDogError(f"{path}: not a comparison record written by `catdog compare` ({err})") from err


def recorded_data_dir(run_folders: list[Path]) -> Path | None:
    """The dataset a run was trained on, as its own config records it (Keras ``run.json``, Poutyne
    ``config.yaml``, Lightning ``lightning_logs/version_*/config.yaml``): the first that holds a manifest."""
    for folder in run_folders:
        candidates: list[Any] = []
        if (folder / "run.json").is_file():
            with contextlib.suppress(ValueError, AttributeError):
                candidates.append(json.loads((folder / "run.json").read_text()).get("config", {}).get("data"))
        for config in [folder / "config.yaml", *sorted(folder.glob("lightning_logs/version_*/config.yaml"))]:
            if config.is_file():
                candidates.append(_yaml_data_dir(config))
        for candidate in candidates:
            if isinstance(candidate, str) and (Path(candidate) / MANIFEST).is_file():
                return Path(candidate)
    return None


def _yaml_data_dir(config: Path) -> str | None:
    """``data.data_dir`` of a resolved trainer config; None without PyYAML (the torch trainers install it)."""
    try:
        import yaml
    except ModuleNotFoundError:
        return None
    try:
        return (yaml.safe_load(config.read_text()).get("data") or {}).get("data_dir")
    except (yaml.YAMLError, AttributeError):
        return None


# -- breeds and mistakes --------------------------------------------------------------------------


def breeds_of_test_dogs(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """``{file relative to the dataset root: breed}`` for the test dogs of ``data_dir/manifest.csv``."""
    path = Path(data_dir) / MANIFEST
    try:
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as err:
        raise CatDogError(f"{path}: not found; --data must be a dataset written by `catdog fuse`") from err
    missing = {"split", "label", "breed", "destination", "status"} - set(manifest.columns)
    if missing:
        raise CatDogError(f"{path}: missing column(s) {', '.join(sorted(missing))}; rerun `catdog fuse`")
    dogs = manifest[(manifest["split"] == "test") & (manifest["label"] == "dog") & (manifest["status"] == "ok")]
    return dict(zip(dogs["destination"], dogs["breed"], strict=True))


def breed_table(predictions: dict[str, Predictions], breeds: dict[str, str]) -> pd.DataFrame:
    """Per test dog breed: ``images`` (in the manifest) and the accuracy of each run (share called Dog).

    Rows are sorted worst first (lowest mean accuracy over the runs). A run whose predictions miss a
    breed's images gets NaN there.
    """
    counts = pd.Series(list(breeds.values()), dtype=str).value_counts()
    table = pd.DataFrame({"images": counts})
    for name, preds in predictions.items():
        frame = pd.DataFrame({"file": preds.files, "label": preds.labels, "p_dog": preds.p_dog})
        frame["breed"] = frame["file"].map(breeds)
        dogs = frame[frame["breed"].notna() & (frame["label"] == 1)]
        table[name] = (dogs["p_dog"] > THRESHOLD).groupby(dogs["breed"]).mean()
    table.index.name = "breed"
    mean = table.drop(columns="images").mean(axis=1)
    return table.assign(_mean=mean).sort_values(["_mean", "images"], ascending=[True, False]).drop(columns="_mean")


def most_called_cat(table: pd.DataFrame, top: int = 5) -> list[tuple[str, float]]:
    """The breeds with the highest mean share of images called Cat over the runs (only those above 0)."""
    called_cat = 1.0 - table.drop(columns="images").mean(axis=1)
    ranked = called_cat[called_cat > 0].sort_values(ascending=False, kind="stable")
    return [(str(breed), float(share)) for breed, share in ranked.head(top).items()]


@dataclass(frozen=True)
class Mistake:
    """One wrong test prediction."""

    file: str
    label: int
    p_dog: float
    breed: str

    @property
    def confidence(self) -> float:
        """Probability given to the wrong class."""
        return self.p_dog if self.label == 0 else 1.0 - self.p_dog


def worst_mistakes(predictions: Predictions, breeds: dict[str, str], count: int = 12) -> tuple[list[Mistake], int]:
    """The ``count`` most confident wrong predictions (ties by file name), and how many are wrong in all."""
    predicted = (predictions.p_dog > THRESHOLD).astype(np.int64)
    wrong = np.flatnonzero(predicted != predictions.labels)
    mistakes = [
        Mistake(predictions.files[i], int(predictions.labels[i]), float(predictions.p_dog[i]),
                breeds.get(predictions.files[i], ""))
        for i in wrong
    ]  # fmt: skip
    mistakes.sort(key=lambda m: (-m.confidence, m.file))
    return mistakes[:count], len(mistakes)


# -- environment ----------------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    """Installed versions of the frameworks of the comparison (read from metadata, nothing is imported)."""
    versions = {"python": platform.python_version()}
    for name, distributions in VERSION_PACKAGES.items():
        for distribution in distributions:
            try:
                versions[name] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            versions.setdefault(name, "not installed")
    return versions


def describe_device() -> str:
    """The CPU (model, cores) and any NVIDIA GPUs ``nvidia-smi`` lists, without importing a framework."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = f"CPU: {cpu}, {cores} core(s) available"
    if shutil.which("nvidia-smi"):
        try:
            gpus = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout.split("\n")  # fmt: skip
            gpus = [gpu.strip() for gpu in gpus if gpu.strip()]
            if gpus:
                device += f"; GPU: {', '.join(gpus)}"
        except (OSError, subprocess.SubprocessError):
            pass
    return device
