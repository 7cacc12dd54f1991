"""The plan of ``catdog compare``: the config file, the recipe, and the command line of every run.

A plan is a plain value (:class:`PlannedRun` per run: its recipe, run folder, commands, or the reason it
cannot run), built without importing torch or TensorFlow, so it can be printed and tested on its own.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from catdog import CatDogError
from catdog.config_files import packaged_config_dir, resolve_config
from catdog.data.splits import VAL_SPLITS

TRAINERS = ("lightning", "poutyne", "keras")
KERAS_MODELS = ("effnetv2b2_scratch", "effnetv2b2_imagenet", "custom_cnn", "vgg16")
#: The torch trainers' config files, relative to ``compare.yaml``, unless its ``configs:`` says otherwise.
TRAINER_CONFIGS = {
    "scratch": "scratch.yaml",
    "pretrained": "pretrained.yaml",
    "poutyne": "poutyne.yaml",
    "csv_logger": "logger/csv.yaml",
}
#: The Keras ImageNet base's file name in Keras' own cache (``$KERAS_HOME/models``).
KERAS_WEIGHTS_NAME = "efficientnetv2-b2_notop.h5"


@dataclass(frozen=True)
class Recipe:
    """What every run shares unless it overrides it (see ``configs/compare.yaml``)."""

    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    seed: int = 42
    val_fraction: float = 0.15
    val_split: str = "random"
    checkpoint: str = "lowest val_loss"
    bn_momentum: float = 0.1
    steps_per_epoch: int | None = None
    num_workers: int = 2
    accelerator: str = "auto"
    wandb: bool = False


@dataclass(frozen=True)
class RunSpec:
    """One entry of ``runs:``."""

    name: str
    trainer: str
    model: str | None = None
    pretrained: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CompareConfig:
    """The whole ``compare.yaml``, paths resolved."""

    data: Path
    out: Path
    recipe: Recipe
    weights: dict[str, Path | None]
    configs: dict[str, Path]
    runs: list[RunSpec]


@dataclass
class PlannedRun:
    """One run as it will be executed: ``commands`` run in order; ``missing`` says why it cannot run."""

    spec: RunSpec
    recipe: Recipe
    run_dir: Path
    commands: list[list[str]]
    missing: str | None = None


def default_config() -> Path:
    """``./configs/compare.yaml`` when it exists, else the packaged ``compare.yaml``."""
    local = Path("configs") / "compare.yaml"
    return local if local.is_file() else packaged_config_dir() / "compare.yaml"


def load_config(path: str | os.PathLike[str]) -> CompareConfig:
    """Read and check ``compare.yaml`` (a file or a packaged config's name); every error names the file and the key.

    ``configs:`` paths are relative to the file, so the packaged ``compare.yaml`` reads the packaged configs.
    """
    path = Path(resolve_config(os.fspath(path)))
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise CatDogError(f"-c {path}: file not found (`-c compare` reads the packaged compare.yaml)") from err
    except yaml.YAMLError as err:
        raise CatDogError(f"-c {path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise CatDogError(f"-c {path}: expected a mapping with data, out, recipe, weights, configs and runs")
    unknown = set(raw) - {"data", "out", "recipe", "weights", "configs", "runs"}
    if unknown:
        raise CatDogError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    recipe = _recipe(raw.get("recipe") or {}, f"{path}: recipe")
    here = path.parent
    configs = {k: here / v for k, v in {**TRAINER_CONFIGS, **(raw.get("configs") or {})}.items()}
    for key, config_file in configs.items():
        if not config_file.is_file():
            raise CatDogError(f"{path}: configs.{key}: {config_file} not found (paths are relative to {here})")
    weights = {k: (Path(v) if v else None) for k, v in (raw.get("weights") or {}).items()}
    runs = [_run_spec(entry, f"{path}: runs[{i}]") for i, entry in enumerate(raw.get("runs") or [])]
    if not runs:
        raise CatDogError(f"{path}: runs is empty; list the runs of the comparison")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise CatDogError(f"{path}: run names must be unique, got {names}")
    return CompareConfig(Path(raw.get("data", "dataset")), Path(raw.get("out", "runs/compare")), recipe, weights,
                         configs, runs)  # fmt: skip


def override_recipe(config: CompareConfig, settings: list[str]) -> CompareConfig:
    """``config`` with ``KEY=VALUE`` settings (``--recipe image_size=64``) applied to its shared recipe."""
    values = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise CatDogError(f"--recipe {setting}: expected KEY=VALUE, e.g. --recipe image_size=64")
        values[key.strip()] = yaml.safe_load(value)
    return replace(config, recipe=_recipe(values, "--recipe", config.recipe))


def _recipe(values: dict[str, Any], where: str, base: Recipe | None = None) -> Recipe:
    known = {f.name for f in fields(Recipe)}
    unknown = set(values) - known
    if unknown:
        raise CatDogError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    recipe = replace(base or Recipe(), **values)
    for key in ("image_size", "epochs", "batch_size"):
        if not isinstance(getattr(recipe, key), int) or getattr(recipe, key) < 1:
            raise CatDogError(f"{where}: {key} must be a positive integer, got {getattr(recipe, key)!r}")
    if recipe.steps_per_epoch is not None and (
        not isinstance(recipe.steps_per_epoch, int) or recipe.steps_per_epoch < 1
    ):
        raise CatDogError(f"{where}: steps_per_epoch must be a positive integer or null")
    if not 0.0 < recipe.val_fraction < 1.0:
        raise CatDogError(f"{where}: val_fraction must be in (0, 1), got {recipe.val_fraction}")
    if recipe.val_split not in VAL_SPLITS:
        raise CatDogError(f"{where}: val_split must be one of {', '.join(VAL_SPLITS)}, got {recipe.val_split!r}")
    return recipe


def _run_spec(entry: Any, where: str) -> RunSpec:
    if not isinstance(entry, dict) or "name" not in entry or "trainer" not in entry:
        raise CatDogError(f"{where}: each run needs at least a name and a trainer ({', '.join(TRAINERS)})")
    unknown = set(entry) - {f.name for f in fields(RunSpec)}
    if unknown:
        raise CatDogError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    spec = RunSpec(**entry)
    if spec.trainer not in TRAINERS:
        raise CatDogError(f"{where}: trainer must be one of {', '.join(TRAINERS)}, got {spec.trainer!r}")
    if spec.trainer == "keras" and spec.model not in KERAS_MODELS:
        raise CatDogError(f"{where}: a keras run needs model: one of {', '.join(KERAS_MODELS)}")
    if spec.trainer != "keras" and spec.model is not None:
        raise CatDogError(f"{where}: model applies to keras runs only (torch runs use the configs' model)")
    _recipe(spec.overrides, f"{where}.overrides")  # check the keys early
    return spec


def plan_runs(config: CompareConfig, data: Path, out: Path, val_files: Path) -> list[PlannedRun]:
    """Every run of ``config`` with its merged recipe, folder and commands (or why it cannot run)."""
    planned = []
    for spec in config.runs:
        recipe = _recipe(spec.overrides, f"run {spec.name}: overrides", config.recipe)
        run_dir = out / spec.name
        weights, missing = _weights(spec, config)
        if spec.trainer == "keras":
            commands = [_keras_command(spec, recipe, data, run_dir, val_files, weights)]
        else:
            commands = _torch_commands(spec, recipe, config, data, run_dir, val_files, weights)
        planned.append(PlannedRun(spec, recipe, run_dir, commands, missing))
    return planned


def _weights(spec: RunSpec, config: CompareConfig) -> tuple[Path | None, str | None]:
    """The weights file a pretrained run needs, or why it cannot run."""
    if not spec.pretrained:
        return None, None
    key = "keras" if spec.trainer == "keras" else "torch"
    path = config.weights.get(key)
    if path is None and key == "keras":
        cached = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / KERAS_WEIGHTS_NAME
        path = cached if cached.is_file() else None
    if path is not None and path.is_file():
        return path, None
    what = "a timm state dict of tf_efficientnetv2_b2" if key == "torch" else f"Keras' {KERAS_WEIGHTS_NAME}"
    where = f"{path} not found" if path is not None else "no file given"
    return None, f"no ImageNet weights ({where}): set weights.{key} in the config to {what} (see docs/comparison.md)"


def _torch_commands(
    spec: RunSpec, recipe: Recipe, config: CompareConfig, data: Path, run_dir: Path, val_files: Path,
    weights: Path | None,
) -> list[list[str]]:  # fmt: skip
    configs = ["-c", str(config.configs["scratch"])]
    if spec.pretrained:
        configs += ["-c", str(config.configs["pretrained"])]
    shared = [
        "--seed_everything", str(recipe.seed),
        "--data.data_dir", str(data),
        "--data.val_files", str(val_files),
        "--data.seed", str(recipe.seed),
        "--data.image_size", str(recipe.image_size),
        "--data.batch_size", str(recipe.batch_size),
        "--data.num_workers", str(recipe.num_workers),
        "--model.bn_momentum", str(recipe.bn_momentum),
        "--trainer.max_epochs", str(recipe.epochs),
        "--trainer.accelerator", recipe.accelerator,
    ]  # fmt: skip
    if recipe.steps_per_epoch is not None:
        shared += ["--trainer.limit_train_batches", str(recipe.steps_per_epoch)]
    if weights is not None:
        shared += ["--model.pretrained_file", str(weights)]
    catdog = [sys.executable, "-m", "catdog"]
    if spec.trainer == "poutyne":
        configs += ["-c", str(config.configs["poutyne"])]
        own = ["--poutyne.run_dir", str(run_dir), "--poutyne.wandb", str(recipe.wandb).lower()]
        return [[*catdog, "poutyne", *configs, *shared, *own, *spec.args]]
    if not recipe.wandb:
        configs += ["-c", str(config.configs["csv_logger"])]
    root = ["--trainer.default_root_dir", str(run_dir)]
    return [
        [*catdog, "fit", *configs, *shared, *root, *spec.args],
        [*catdog, "test", *configs, *shared, *root, *spec.args, "--ckpt_path", "best"],
    ]


def _keras_command(
    spec: RunSpec, recipe: Recipe, data: Path, run_dir: Path, val_files: Path, weights: Path | None
) -> list[str]:
    command = [
        sys.executable, "-m", "keras_baselines", "train",
        "--model", str(spec.model),
        "--data", str(data),
        "--out", str(run_dir),
        "--val-files", str(val_files),
        "--bn-momentum", str(recipe.bn_momentum),
        "--image-size", str(recipe.image_size),
        "--epochs", str(recipe.epochs),
        "--batch-size", str(recipe.batch_size),
        "--seed", str(recipe.seed),
    ]  # fmt: skip
    if recipe.steps_per_epoch is not None:
        command += ["--steps-per-epoch", str(recipe.steps_per_epoch)]
    if weights is not None:
        command += ["--weights", str(weights), "--offline"]
    return [*command, *spec.args]


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a plain mapping (for the record and the report)."""
    return asdict(recipe)
