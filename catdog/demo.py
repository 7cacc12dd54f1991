"""``catdog demo``: the whole pipeline on generated data, with the same commands a real run uses.

    catdog demo [--workdir demo-run] [--image-size 64] [--epochs 3] [--pretrained-file PATH] [--verbose]

Stages (:func:`plan_stages`), each one or more real ``catdog`` commands, written to ``commands.sh``:
sample-data -> fuse -> fit + test (scratch; pretrained too when weights are found offline: ``--pretrained-file``,
``$CATDOG_PRETRAINED_FILE`` or the timm/Hugging Face cache) -> calibrate -> export -> serve (a new cat and dog
posted to every endpoint, each answer compared with the ONNX file's own, computed here) -> report.

One console line per stage (its time and result), then a summary: test scores, the served answers (right or
wrong; after a short run one image can be missed, the test accuracy is the measure) and whether they equal the
ONNX file's. Each stage's output goes to ``logs/``; ``--verbose`` shows it too. The demo owns ``--workdir``: it
refuses a non-empty folder it did not make and clears its own on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from catdog import DISPLAY_NAMES, CatDogError
from catdog.config_files import packaged_config_dir
from catdog.serving.process import Server, post_image
from catdog.utils import free_port, output_to

#: File that marks a folder as made by ``catdog demo`` (so a rerun may clear it).
MARKER = ".catdog-demo"
PRETRAINED_ENV = "CATDOG_PRETRAINED_FILE"
#: Served and in-process ONNX probabilities agree to this (JSON float round trip, same onnxruntime).
AGREEMENT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Stage:
    """One step of the demo: ``run(demo)`` does it and returns a short result for the console line."""

    name: str  # the log file's name: logs/<number>-<name>.log
    title: str
    run: Callable[[Demo], str]


@dataclass
class Demo:
    """The demo's settings and what its stages hand on to each other."""

    args: argparse.Namespace
    configs: Path
    models: dict[str, list[str]]  # name -> config arguments of `catdog fit`
    started: float = field(default_factory=time.perf_counter)
    times: list[tuple[str, float]] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    onnx_files: dict[str, str] = field(default_factory=dict)
    answers: list[dict] = field(default_factory=list)

    def path(self, *parts: str) -> str:
        return str(Path(self.args.workdir).joinpath(*parts))

    def catdog(self, *argv: str) -> None:
        """Run ``catdog <argv>`` in this process (the same code as the console command), recorded in commands.sh."""
        from catdog.cli import main as cli_main

        command = shlex.join(["catdog", *argv])
        with open(self.path("commands.sh"), "a") as record:
            record.write(command + "\n")
        print(f"$ {command}", flush=True)
        status = cli_main(list(argv))
        if status != 0:
            raise CatDogError(f"`{command}` failed with exit status {status}")


def run_demo(args: argparse.Namespace) -> int:
    """Run every stage; returns 0 when every request was answered."""
    from catdog.training.network import DEFAULT_MODEL

    if args.image_size < 16 or args.epochs < 1 or args.cats < 4 or args.breeds < 2 or args.dogs_per_breed < 2:
        raise CatDogError("catdog demo needs --image-size >= 16, --epochs >= 1, --cats >= 4, --breeds >= 2 "
                          "and --dogs-per-breed >= 2")  # fmt: skip
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    configs = find_configs(args.configs)
    weights, weights_source = find_pretrained_weights(args.pretrained_file, DEFAULT_MODEL)
    prepare_workdir(args.workdir)
    demo = Demo(args, configs, plan_models(configs, weights, weights_source, DEFAULT_MODEL))
    source = f", pretrained weights from {weights or 'the timm/Hugging Face cache'}" if weights_source else ""
    print(f"catdog demo in {args.workdir}: {args.image_size} px, {args.epochs} epoch(s), configs in {configs}{source}")
    stages = plan_stages(demo)
    for number, stage in enumerate(stages, start=1):
        run_stage(demo, stage, number, len(stages))
    print_summary(demo)
    failed = [a for a in demo.answers if a["status"] != 200]
    if failed:
        raise CatDogError(f"{len(failed)} request(s) failed; see the answers above and {demo.path('serve.log')}")
    return 0


def plan_stages(demo: Demo) -> list[Stage]:
    """The demo's stages in order."""
    stages = [
        Stage("sample-data", "generate Kaggle-layout sample data", make_sources),
        Stage("fuse", "fuse cats and breed-split dogs", fuse_sources),
    ]
    for name in demo.models:
        title = f"train and test the {name} model ({demo.args.epochs} epoch(s))"
        stages.append(Stage(f"train-{name}", title, lambda d, name=name: train_and_test(d, name)))
    stages += [
        Stage("calibrate", "calibrate on the validation split", calibrate_runs),
        Stage("export", "export ONNX", export_models),
        Stage("serve", "serve, and ask every endpoint about a new cat and dog", serve_and_ask),
        Stage("report", "results table and plots", write_report),
    ]
    return stages


def run_stage(demo: Demo, stage: Stage, number: int, total: int) -> None:
    """Run one stage with its output in its log file; print its line (time, result) or raise with the log's end."""
    log = Path(demo.path("logs", f"{number}-{stage.name}.log"))
    log.parent.mkdir(exist_ok=True)
    print(f"[{number}/{total}] {stage.title} ...", end="", flush=True)
    start = time.perf_counter()
    try:
        with output_to(log, echo=demo.args.verbose):
            result = stage.run(demo)
    except CatDogError as err:
        print(" FAILED", flush=True)
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise CatDogError(f"{err}; the end of its log {log}:\n{tail}") from None
    seconds = time.perf_counter() - start
    demo.times.append((stage.title, seconds))
    print(f" {seconds:.1f}s: {result}", flush=True)


def make_sources(demo: Demo) -> str:
    args, w = demo.args, demo.path
    demo.catdog("sample-data", "--out", w("kaggle"), "--cats", str(args.cats), "--dogs-per-breed",
                str(args.dogs_per_breed), "--breeds", str(args.breeds), "--size", str(args.image_size),
                "--seed", str(args.seed))  # fmt: skip
    return f"{args.cats} cats and {args.breeds} breeds of {args.dogs_per_breed} dogs in {w('kaggle')}"


def fuse_sources(demo: Demo) -> str:
    args, w = demo.args, demo.path
    cat_train = max(2, round(args.cats * 0.72))
    demo.catdog("fuse", "--cats-source", w("kaggle", "dogs-vs-cats"), "--dogs-source",
                w("kaggle", "dog-breed-identification"), "--out", w("dataset"),
                "--cat-train", str(cat_train), "--cat-test", str(args.cats - cat_train))  # fmt: skip
    counts = {s: sum(1 for _ in Path(w("dataset", s)).rglob("*.jpg")) for s in ("train", "test")}
    return f"{counts['train']} training and {counts['test']} test images in {w('dataset')}"


def train_and_test(demo: Demo, name: str) -> str:
    """``catdog fit`` and ``catdog test`` of one model; its best checkpoint is handed on."""
    from catdog.metrics import read_metrics

    args, w, config_args = demo.args, demo.path, demo.models[name]
    # The model's configs first, then the CSV-only logger config, then the overrides.
    n_configs = 2 * sum(1 for arg in config_args if arg == "-c")
    common = [*config_args[:n_configs], *([] if args.wandb else ["-c", str(demo.configs / "logger" / "csv.yaml")])]
    common += config_args[n_configs:]
    common += ["--data.data_dir", w("dataset"), "--data.image_size", str(args.image_size),
               "--data.batch_size", str(args.batch_size), "--data.num_workers", str(args.num_workers),
               "--trainer.default_root_dir", w("runs", name)]  # fmt: skip
    if args.train_seed is not None:
        common += ["--seed_everything", str(args.train_seed)]
    demo.catdog("fit", *common, "--trainer.max_epochs", str(args.epochs))
    demo.catdog("test", *common, "--ckpt_path", "best")
    demo.checkpoints[name] = w("runs", name, "checkpoints", "best.ckpt")
    metrics = read_metrics(w("runs", name, "metrics.json"))
    return f"test accuracy {metrics.accuracy:.3f} on {metrics.n_test} images (AUROC {metrics.auroc:.3f})"


def calibrate_runs(demo: Demo) -> str:
    from catdog.calibration import CALIBRATION_FILENAME

    demo.catdog("calibrate", *(demo.path("runs", name) for name in demo.checkpoints), "--skip-unfit")
    fitted = [name for name in demo.checkpoints if Path(demo.path("runs", name, CALIBRATION_FILENAME)).is_file()]
    return f"calibrated: {', '.join(fitted) or 'none (too few validation images: see the log)'}"


def export_models(demo: Demo) -> str:
    ckpt_args = [arg for n, p in demo.checkpoints.items() for arg in ("--ckpt", f"{n}={p}")]
    demo.catdog("export", *ckpt_args, "--out-dir", demo.path("models"))
    demo.onnx_files = {name: demo.path("models", f"{name}.onnx") for name in demo.checkpoints}
    return ", ".join(demo.onnx_files.values())


def serve_and_ask(demo: Demo) -> str:
    """Serve the ONNX files, post a new cat and dog to every endpoint, compare with the files; stop the server."""
    w = demo.path
    images = make_query_images(Path(w("dataset")), Path(w("requests")), demo.args.image_size, demo.args.seed)
    server = Server(demo.onnx_files, demo.args.port or free_port(), Path(w("serve.log")))
    try:
        server.start()
        print(f"server ready at {server.url}: {json.dumps(server.wait_ready())}", flush=True)
        for name, onnx_file in demo.onnx_files.items():
            in_process = onnx_answers(Path(onnx_file), list(images.values()))
            for (truth, image), expected in zip(images.items(), in_process, strict=True):
                url = f"{server.url}/predict/{name}"
                print(f"$ curl -F file=@{image} {url}", flush=True)
                status, body = post_image(url, image)
                print(f"  {status} {json.dumps(body)}", flush=True)
                demo.answers.append(judge(name, truth, image, status, body, expected))
    finally:
        code = server.stop()
        print(f"server stopped (exit status {code})", flush=True)
    Path(w("answers.json")).write_text(json.dumps(demo.answers, indent=1) + "\n")
    if code != 0:
        raise CatDogError(f"catdog serve stopped with exit status {code}; see {server.log_path}")
    agree = sum(a["agrees_with_onnx_file"] for a in demo.answers)
    return f"{len(demo.answers)} answers, {agree} equal to the ONNX file's own; server stopped (port {server.url})"


def write_report(demo: Demo) -> str:
    demo.catdog("report", "--runs", demo.path("runs"), "--out", demo.path("results.md"))
    return demo.path("results.md")


def onnx_answers(model: Path, images: list[Path]) -> list[list[float]]:
    """[P(Cat), P(Dog)] of each image from the ONNX file in this process, with the preprocessing of its metadata."""
    from catdog.data.transforms import PreprocessConfig
    from catdog.export.onnx import read_onnx_metadata
    from catdog.export.quantize import predict_files

    config = PreprocessConfig.from_metadata(read_onnx_metadata(model))
    return [[1.0 - float(p), float(p)] for p in predict_files(model, images, config, threads=1)]


def judge(model: str, truth: str, image: Path, status: int, body: dict, expected: list[float]) -> dict:
    """One answer with its verdict (right/wrong) and whether it equals the ONNX file's in-process answer."""
    served = [float(body.get("probabilities", {}).get(n, float("nan"))) for n in DISPLAY_NAMES]
    gap = max(abs(s - e) for s, e in zip(served, expected, strict=True)) if status == 200 else float("nan")
    label = str(body.get("label", "?"))
    return {
        "model": model, "image": truth, "path": str(image), "status": status, "answer": body,
        "right": label.lower() == truth, "onnx_file": expected, "max_difference": gap,
        "agrees_with_onnx_file": bool(gap <= AGREEMENT_TOLERANCE),
    }  # fmt: skip


def print_summary(demo: Demo) -> None:
    from catdog.metrics import read_metrics

    print(f"\nTest split ({demo.args.image_size} px, {demo.args.epochs} epoch(s) on generated data; the range over "
          "seeds and CPUs is in docs/testing.md):")  # fmt: skip
    print(f"  {'model':<12} {'accuracy':>8} {'balanced':>8} {'AUROC':>6} {'images':>6}")
    for name in demo.checkpoints:
        m = read_metrics(demo.path("runs", name, "metrics.json"))
        print(f"  {name:<12} {m.accuracy:>8.3f} {m.balanced_accuracy:>8.3f} {m.auroc or 0:>6.3f} {m.n_test:>6}")
    print_answers(demo.answers)
    print("\nTime per stage:")
    for title, seconds in demo.times:
        print(f"  {seconds:7.1f}s  {title}")
    print(f"  {time.perf_counter() - demo.started:7.1f}s  total")
    print(f"\nEverything is in {demo.args.workdir}/: commands.sh (every command run), logs/ (each stage's output), "
          "kaggle/, dataset/, runs/<model>/, models/, requests/, answers.json, results.md and its plots.")  # fmt: skip


def print_answers(answers: list[dict]) -> None:
    """The server's answers as a small table: right or wrong, and whether each equals the ONNX file's answer."""
    print("\nAnswers from catdog serve for one new cat and one new dog (two images: one can be missed after a short "
          "run; the test accuracy above is the measure):")  # fmt: skip
    print(f"  {'model':<12} {'image':<6} {'answer':<7} {'P(' + DISPLAY_NAMES[0] + ')':>8} "
          f"{'P(' + DISPLAY_NAMES[1] + ')':>8}  verdict  ONNX file in-process")  # fmt: skip
    for row in answers:
        body = row["answer"]
        if row["status"] != 200:
            print(f"  {row['model']:<12} {row['image']:<6} HTTP {row['status']}: {body}")
            continue
        p_cat, p_dog = (body.get("probabilities", {}).get(n, 0) for n in DISPLAY_NAMES)
        same = f"same (max difference {row['max_difference']:.1e})" if row["agrees_with_onnx_file"] else "DIFFERENT"
        verdict = "right" if row["right"] else "wrong"
        print(f"  {row['model']:<12} {row['image']:<6} {body.get('label', '?'):<7} "
              f"{p_cat:>8.3f} {p_dog:>8.3f}  {verdict:<7}  {same}")  # fmt: skip


def prepare_workdir(workdir: Path) -> None:
    """Create ``workdir``, or clear it when a previous demo made it; refuse any other non-empty folder."""
    if workdir.exists() and not workdir.is_dir():
        raise CatDogError(f"--workdir {workdir}: exists and is not a folder; choose another --workdir")
    if workdir.is_dir() and any(workdir.iterdir()):
        if not (workdir / MARKER).is_file():
            raise CatDogError(
                f"--workdir {workdir}: folder is not empty and was not made by `catdog demo`; "
                "choose a new or empty folder (the demo clears its workdir on a rerun)"
            )
        for child in workdir.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `catdog demo`; a rerun of the demo clears this folder\n")


def find_configs(explicit: Path | None) -> Path:
    """The folder with ``scratch.yaml`` and ``pretrained.yaml``: ``--configs``, ./configs or the packaged one."""
    candidates = [explicit] if explicit else [Path("configs"), packaged_config_dir()]
    for folder in candidates:
        if folder is not None and (folder / "scratch.yaml").is_file() and (folder / "pretrained.yaml").is_file():
            return folder  # as given: the printed commands then read `-c configs/scratch.yaml` in the checkout
    where = explicit or f"./configs or {packaged_config_dir()}"
    raise CatDogError(
        f"--configs: no scratch.yaml and pretrained.yaml in {where}; pass --configs PATH/TO/configs "
        "(`catdog configs --out configs` copies the packaged ones)"
    )


def find_pretrained_weights(explicit: Path | None, model_name: str) -> tuple[Path | None, str]:
    """(weights file or ``None``, where it came from); ``None`` with ``"hub cache"`` means timm's cache.

    Returns ``(None, "")`` when no weights are available offline. A file that is configured but missing
    is an error, not a silent skip.
    """
    configured = explicit or (Path(os.environ[PRETRAINED_ENV]) if os.environ.get(PRETRAINED_ENV) else None)
    if configured is not None:
        source = "--pretrained-file" if explicit else f"${PRETRAINED_ENV}"
        if not configured.expanduser().is_file():
            raise CatDogError(
                f"{source} {configured}: file not found; pass the path of a timm state dict for {model_name} "
                "(e.g. torch.save(timm.create_model(name, pretrained=True).state_dict(), path) on a machine "
                "with internet access)"
            )
        return configured.expanduser(), source
    from catdog.training.network import hub_cached_weights

    cached = hub_cached_weights(model_name)
    return (None, "hub cache") if cached else (None, "")


def plan_models(configs: Path, weights: Path | None, weights_source: str, model_name: str) -> dict[str, list[str]]:
    """The models to train, ``name -> config arguments``; says clearly when the pretrained one is skipped."""
    scratch = ["-c", str(configs / "scratch.yaml")]
    models: dict[str, list[str]] = {"scratch": scratch}
    overlay = [*scratch, "-c", str(configs / "pretrained.yaml")]  # pretrained.yaml holds what differs from scratch
    if weights is not None:
        models["pretrained"] = [*overlay, "--model.pretrained_file", str(weights)]
    elif weights_source:
        models["pretrained"] = overlay
    else:
        print(
            f"\nNOTE: cannot find pretrained weights for {model_name} (no --pretrained-file, no ${PRETRAINED_ENV}, "
            "nothing in the timm/Hugging Face cache, and nothing is downloaded): the pretrained model is SKIPPED; "
            "only the scratch model is trained. To include it, save the ImageNet weights on a machine with internet "
            f"access, torch.save(timm.create_model('{model_name}', pretrained=True).state_dict(), "
            f"'{model_name}.pth'), and pass --pretrained-file {model_name}.pth.",
            flush=True,
        )
    return models


def make_query_images(dataset: Path, folder: Path, size: int, seed: int) -> dict[str, Path]:
    """One new cat and one new dog of a breed kept out of training (from ``dataset/split.json``)."""
    import numpy as np

    from catdog.data.sample_data import BREED_NAMES, breed_style, draw_cat, draw_dog

    split = json.loads((dataset / "split.json").read_text())
    test_breeds = [b for b in split.get("test_breeds", []) if b in BREED_NAMES]
    breed_index = BREED_NAMES.index(test_breeds[0]) if test_breeds else len(BREED_NAMES) - 1
    rng = np.random.default_rng([seed, 2024])
    folder.mkdir(parents=True, exist_ok=True)
    images = {"cat": folder / "cat.jpg", "dog": folder / "dog.jpg"}
    draw_cat(rng, size).save(images["cat"], quality=92)
    draw_dog(rng, size, breed_style(breed_index, seed)).save(images["dog"], quality=92)
    return images


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catdog demo",
        description="Run the whole pipeline on generated data: sample-data, fuse, fit, test, export, serve, report.",
    )
    parser.add_argument("--workdir", type=Path, default=Path("demo-run"), help="where everything goes (demo-run)")
    parser.add_argument("--image-size", type=int, default=64, help="training and serving size in pixels (64)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per model (3)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (16)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader processes (0: load in-process)")
    parser.add_argument("--cats", type=int, default=200, help="generated cats (200)")
    parser.add_argument("--dogs-per-breed", type=int, default=20, help="generated dogs per breed (20)")
    parser.add_argument("--breeds", type=int, default=10, help="generated dog breeds (10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data (0)")
    parser.add_argument(
        "--pretrained-file",
        type=Path,
        default=None,
        help=f"timm weights for the pretrained model (default ${PRETRAINED_ENV}, else the timm/HF cache)",
    )
    parser.add_argument("--configs", type=Path, default=None, help="folder with scratch.yaml and pretrained.yaml")
    parser.add_argument("--wandb", action="store_true", help="keep the configs' offline W&B logger (CSV only)")
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--train-seed", type=int, default=None, help="training seed (default: the config's, 42)")
    parser.add_argument("--verbose", action="store_true", help="show every stage's full output (always in logs/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_demo(build_parser().parse_args(argv))
