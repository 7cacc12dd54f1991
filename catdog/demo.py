"""``catdog demo``: the whole pipeline on generated data, with the same commands a real run uses.

    catdog demo [--workdir demo-run] [--image-size 64] [--epochs 3] [--pretrained-file PATH]

Steps, each a real ``catdog`` command (printed before it runs, so it can be copied):

1. ``catdog sample-data``: both Kaggle layouts with generated, learnable JPEGs;
2. ``catdog fuse``: the breed-disjoint ``dataset/{train,test}/{cat,dog}``;
3. ``catdog fit`` + ``catdog test`` with ``configs/scratch.yaml``, then ``configs/pretrained.yaml`` when
   pretrained weights are available offline (``--pretrained-file``, ``$CATDOG_PRETRAINED_FILE`` or the
   timm/Hugging Face cache); otherwise the pretrained model is skipped with a message saying why;
4. ``catdog calibrate`` (a map fitted on each run's validation predictions) and ``catdog export``:
   ``models/<name>.onnx``, calibrated;
5. ``catdog serve`` on a free local port; one generated cat and one generated dog (of a breed kept out
   of training) are posted to every ``/predict/<name>`` endpoint and the answers printed;
6. ``catdog report``: the results table (``results.md``) and plots; then the server is stopped.

Everything is left in ``--workdir``, which the demo owns: it refuses a non-empty folder it did not
create, and clears its own folder at the start of a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from catdog import DISPLAY_NAMES, CatDogError
from catdog.config_files import packaged_config_dir
from catdog.serving.process import Server, post_image
from catdog.utils import free_port

#: File that marks a folder as made by ``catdog demo`` (so a rerun may clear it).
MARKER = ".catdog-demo"
PRETRAINED_ENV = "CATDOG_PRETRAINED_FILE"


@dataclass
class Step:
    """One timed stage of the demo."""

    name: str
    seconds: float


class Demo:
    """Runs the steps in order, printing each command and timing each stage."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir: Path = args.workdir
        self.steps: list[Step] = []
        self.started = time.perf_counter()

    # helpers --------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[demo {elapsed:6.1f}s] {message}", flush=True)

    @contextmanager
    def stage(self, title: str) -> Iterator[None]:
        print(flush=True)
        self.say(f"== {title}")
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.steps.append(Step(title, seconds))
        self.say(f"   done in {seconds:.1f}s")

    def catdog(self, *argv: str) -> None:
        """Run ``catdog <argv>`` in this process (the same code as the console command)."""
        from catdog.cli import main as cli_main

        command = shlex.join(["catdog", *argv])
        print(f"$ {command}", flush=True)
        status = cli_main(list(argv))
        if status != 0:
            raise CatDogError(f"`{command}` failed with exit status {status} (its messages are above)")

    def path(self, *parts: str) -> str:
        return str(self.workdir.joinpath(*parts))


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
    return parser


def run_demo(args: argparse.Namespace) -> int:
    """Run every step; returns 0 when every request was answered."""
    from catdog.training.network import DEFAULT_MODEL

    if args.image_size < 16 or args.epochs < 1 or args.cats < 4 or args.breeds < 2 or args.dogs_per_breed < 2:
        raise CatDogError("catdog demo needs --image-size >= 16, --epochs >= 1, --cats >= 4, --breeds >= 2 "
                          "and --dogs-per-breed >= 2")  # fmt: skip
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    configs = find_configs(args.configs)
    weights, weights_source = find_pretrained_weights(args.pretrained_file, DEFAULT_MODEL)
    prepare_workdir(args.workdir)
    demo = Demo(args)
    demo.say(f"catdog demo in {args.workdir}: {args.image_size} px, {args.epochs} epoch(s), configs in {configs}")
    make_dataset(demo, args)
    models = plan_models(configs, weights, weights_source, DEFAULT_MODEL)
    if "pretrained" in models:
        demo.say(f"pretrained weights: {weights or 'the timm/Hugging Face cache'} ({weights_source})")
    checkpoints = train_and_test(demo, args, configs, models)
    number = 3 + len(models)
    with demo.stage(f"{number}. calibrate on validation, export ONNX"):
        demo.catdog("calibrate", *(demo.path("runs", name) for name in checkpoints), "--skip-unfit")
        ckpt_args = [arg for n, p in checkpoints.items() for arg in ("--ckpt", f"{n}={p}")]
        demo.catdog("export", *ckpt_args, "--out-dir", demo.path("models"))
    onnx_files = {name: demo.path("models", f"{name}.onnx") for name in checkpoints}
    answers, server_log = serve_and_report(demo, args, onnx_files, number + 1)
    print_summary(demo, args)
    failed = [a for a in answers if a["status"] != 200]
    if failed:
        raise CatDogError(f"{len(failed)} request(s) failed; see the answers above and {server_log}")
    return 0


def make_dataset(demo: Demo, args: argparse.Namespace) -> None:
    """Steps 1-2: generated Kaggle-layout sources, fused into ``dataset/``."""
    w = demo.path
    with demo.stage("1. generate Kaggle-layout sample data"):
        demo.catdog("sample-data", "--out", w("kaggle"), "--cats", str(args.cats), "--dogs-per-breed",
                    str(args.dogs_per_breed), "--breeds", str(args.breeds), "--size", str(args.image_size),
                    "--seed", str(args.seed))  # fmt: skip
    cat_train = max(2, round(args.cats * 0.72))
    with demo.stage("2. fuse cats and breed-split dogs"):
        demo.catdog("fuse", "--cats-source", w("kaggle", "dogs-vs-cats"), "--dogs-source",
                    w("kaggle", "dog-breed-identification"), "--out", w("dataset"),
                    "--cat-train", str(cat_train), "--cat-test", str(args.cats - cat_train))  # fmt: skip


def train_and_test(demo: Demo, args: argparse.Namespace, configs: Path, models: dict[str, list[str]]) -> dict[str, str]:
    """Step 3 onwards: ``catdog fit`` and ``catdog test`` of each model; returns each model's best checkpoint."""
    w = demo.path
    checkpoints: dict[str, str] = {}
    for number, (name, config_args) in enumerate(models.items(), start=3):
        # The model's configs first, then the CSV-only logger config, then the overrides.
        n_configs = 2 * sum(1 for arg in config_args if arg == "-c")
        common = [*config_args[:n_configs], *([] if args.wandb else ["-c", str(configs / "logger" / "csv.yaml")])]
        common += config_args[n_configs:]
        common += ["--data.data_dir", w("dataset"), "--data.image_size", str(args.image_size),
                   "--data.batch_size", str(args.batch_size), "--data.num_workers", str(args.num_workers),
                   "--trainer.default_root_dir", w("runs", name)]  # fmt: skip
        with demo.stage(f"{number}. train and test the {name} model ({args.epochs} epoch(s))"):
            demo.catdog("fit", *common, "--trainer.max_epochs", str(args.epochs))
            demo.catdog("test", *common, "--ckpt_path", "best")
        checkpoints[name] = w("runs", name, "checkpoints", "best.ckpt")
    return checkpoints


def serve_and_report(
    demo: Demo, args: argparse.Namespace, onnx_files: dict[str, str], number: int
) -> tuple[list[dict], Path]:
    """Serve the ONNX files, post a new cat and dog to every endpoint, then write the report; stops the server."""
    w = demo.path
    images = make_query_images(Path(w("dataset")), Path(w("requests")), args.image_size, args.seed)
    server = Server(onnx_files, args.port or free_port(), Path(w("serve.log")))
    answers: list[dict] = []
    try:
        with demo.stage(f"{number}. serve and ask every endpoint about a new cat and dog"):
            server.start()
            health = server.wait_ready()
            demo.say(f"server ready at {server.url}: {json.dumps(health)}")
            for name in onnx_files:
                for truth, image in images.items():
                    url = f"{server.url}/predict/{name}"
                    print(f"$ curl -F file=@{image} {url}", flush=True)
                    status, body = post_image(url, image)
                    answers.append({"model": name, "image": truth, "status": status, "answer": body})
                    print(f"  {status} {json.dumps(body)}", flush=True)
        print_answers(answers)
        with demo.stage(f"{number + 1}. results table"):
            demo.catdog("report", "--runs", w("runs"), "--out", w("results.md"))
    finally:
        code = server.stop()
        demo.say(f"server stopped (exit status {code})")
    return answers, server.log_path


def print_summary(demo: Demo, args: argparse.Namespace) -> None:
    print("\nTime per step:")
    for step in demo.steps:
        print(f"  {step.seconds:7.1f}s  {step.name}")
    print(f"  {time.perf_counter() - demo.started:7.1f}s  total")
    print(
        f"\nEverything is in {args.workdir}/: kaggle/ (generated sources), dataset/ (fused), runs/<model>/ "
        "(checkpoints, metrics.json, logs), models/*.onnx, requests/, serve.log, results.md and its plots."
    )


def print_answers(answers: list[dict]) -> None:
    """The server's answers as a small table, each marked right or wrong."""
    print("\nAnswers from catdog serve:")
    print(f"  {'model':<12} {'image':<6} {'answer':<7} {'P(' + DISPLAY_NAMES[0] + ')':>8} "
          f"{'P(' + DISPLAY_NAMES[1] + ')':>8}")  # fmt: skip
    for row in answers:
        body = row["answer"]
        if row["status"] != 200:
            print(f"  {row['model']:<12} {row['image']:<6} HTTP {row['status']}: {body}")
            continue
        probs = body.get("probabilities", {})
        label = body.get("label", "?")
        verdict = "right" if str(label).lower() == row["image"] else "wrong"
        print(f"  {row['model']:<12} {row['image']:<6} {label:<7} {probs.get(DISPLAY_NAMES[0], 0):>8.3f} "
              f"{probs.get(DISPLAY_NAMES[1], 0):>8.3f}  {verdict}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run_demo(build_parser().parse_args(argv))
