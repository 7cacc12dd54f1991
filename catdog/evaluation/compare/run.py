"""``catdog compare``: every model of the comparison on one dataset, one recipe, one split, then one report.

    catdog compare -c configs/compare.yaml [--data dataset] [--out runs/compare] [--only NAME ...] [--force]
                   [--recipe image_size=64 --recipe epochs=3 ...] [--devices cpu:2 | cuda:0,1] [--threads T]

Plan: read the config (:mod:`catdog.evaluation.compare.plan`), choose the validation files once
(:func:`catdog.data.splits.split_train`, stratified and seeded) and write them as ``<out>/val_files.txt``.
Do: run each trainer as its own process (``catdog fit``/``test``, ``catdog poutyne``, ``python -m
keras_baselines``; catdog never imports TensorFlow), its output in ``<out>/<run>/run.log``, with a
progress line (elapsed time, epoch). A run whose outputs are complete for the same commands is skipped
(``--force`` reruns it); a run without its weights file is skipped with the reason; a failing run is
reported with its log and the others go on. ``--devices`` runs several at a time, one per device
(:mod:`catdog.evaluation.compare.devices`; each run's device is recorded). Calibrate: each run with results gets
its calibration map, fitted on its own validation predictions (:mod:`catdog.calibration`; a run with too few
validation images stays uncalibrated, saying why). Report: ``<out>/compare.json`` and ``<out>/results.md``
(:mod:`catdog.evaluation.report.command`); the exit status is 1 when a run failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from catdog import CatDogError
from catdog.calibration import CALIBRATION_FILENAME, calibrate_run
from catdog.data.splits import split_train, write_file_list
from catdog.evaluation.compare.devices import STOP, Slot, parse_devices, run_in_slots
from catdog.evaluation.compare.plan import (
    PlannedRun,
    Recipe,
    default_config,
    load_config,
    override_recipe,
    plan_runs,
    recipe_dict,
)
from catdog.evaluation.report.collect import COMPARE_RECORD, ComparisonRecord, RunRecord, describe_device, read_record
from catdog.evaluation.report.tables import collect, format_duration
from catdog.metrics import (
    METRICS_FILENAME,
    PREDICTIONS_FILENAME,
    VAL_PREDICTIONS_FILENAME,
    read_metrics,
    read_predictions,
)

VAL_FILES = "val_files.txt"
RUN_LOG = "run.log"
#: Written last in a run folder: the commands that made its outputs (a changed command reruns the run).
DONE_FILE = "compare-run.json"
_EPOCH = re.compile(r"Epoch:?\s+(\d+)(?:/(\d+))?")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PROGRESS_EVERY = 30.0
#: Runs several ``catdog`` commands (a JSON list of argument lists) in one interpreter, stopping at a failure.
_IN_ONE_PROCESS = """import json, sys
from catdog.cli import main
for argv in json.loads(sys.argv[1]):
    status = main(argv)
    if status:
        sys.exit(status)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catdog compare", description=__doc__.split("\n")[0])
    parser.add_argument(
        "-c", "--config", type=Path, default=None,
        help="compare.yaml: a file or a packaged config's name (default ./configs/compare.yaml, else the packaged one)",
    )  # fmt: skip
    parser.add_argument("--data", type=Path, default=None, help="fused dataset (default: the config's data)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the config's out)")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None, help="run only these runs")
    parser.add_argument("--force", action="store_true", help="rerun runs whose outputs are complete")
    parser.add_argument(
        "--recipe", action="append", default=[], metavar="KEY=VALUE",
        help="change a setting of the shared recipe, e.g. --recipe image_size=64 --recipe epochs=3",
    )  # fmt: skip
    parser.add_argument(
        "--devices", default=None, metavar="SPEC",
        help="run several runs at a time, one per device: cpu:N (N CPU slots) or GPU ids (cuda:0,1); "
        "default: one after the other",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads per run (default: the CPUs split between the slots)"
    )
    args = parser.parse_args(argv)
    config = args.config or default_config()
    slots = parse_devices(args.devices, args.threads)
    return compare(config, data=args.data, out=args.out, only=args.only, force=args.force, recipe=args.recipe,
                   slots=slots)  # fmt: skip


def compare(
    config_path: Path, data: Path | None = None, out: Path | None = None, only: list[str] | None = None,
    force: bool = False, recipe: list[str] | None = None, slots: list[Slot] | None = None,
) -> int:  # fmt: skip
    """Run the comparison, the runs on ``slots`` (default: one after the other); returns the exit status (1 when a
    run failed)."""
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    config = override_recipe(load_config(config_path), recipe or [])
    data = (data or config.data).resolve()
    out = (out or config.out).resolve()
    names = [spec.name for spec in config.runs]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise CatDogError(f"--only {' '.join(unknown)}: no such run in {config_path}; runs: {', '.join(names)}")
    val_files = _choose_val_files(data, out, config.recipe)
    planned = plan_runs(config, data, out, val_files)
    previous = _previous_record(out)
    tags = {run.spec.name: f"[{index}/{len(planned)}] {run.spec.name}" for index, run in enumerate(planned, start=1)}
    chosen = [run for run in planned if only is None or run.spec.name in only]
    done = run_in_slots(chosen, slots or [Slot("default")],
                        lambda run, slot: _execute_and_calibrate(run, out, tags[run.spec.name], force, previous,
                                                                 slot))  # fmt: skip
    by_name = {entry.name: entry for entry in done}
    entries = []
    for run in planned:  # a run not selected keeps its old entry
        old = previous.entry(run.spec.name) if previous else None
        entries.append(by_name.get(run.spec.name) or old or _entry(run, out, "skipped", "not selected (--only)"))
    total = time.perf_counter() - start
    record = ComparisonRecord(str(data), recipe_dict(config.recipe), describe_device(), VAL_FILES, entries, total)
    record.write(out)
    _write_results(out, data)
    selected = [e for e in entries if only is None or e.name in only]
    failed = [e for e in selected if e.status == "failed"]  # a run not selected now keeps its old status
    cpu = _children_cpu_seconds() - cpu_start
    print(f"catdog compare: {len(selected)} run(s) in {format_duration(total)} (total {total:.1f} s wall, "
          f"{cpu:.1f} s CPU); {len(failed)} failed; report: {out / 'results.md'}")  # fmt: skip
    for entry in failed:
        print(f"  failed: {entry.name}: {entry.reason} (log: {out / entry.log if entry.log else '-'})", file=sys.stderr)
    return 1 if failed else 0


def _choose_val_files(data: Path, out: Path, recipe: Recipe) -> Path:
    """Write ``<out>/val_files.txt`` (the recipe's split, seeded; the same for every run) and return its path."""
    split = split_train(data, val_fraction=recipe.val_fraction, seed=recipe.seed, val_split=recipe.val_split)
    path = out / VAL_FILES
    names = sorted(split.val_names(data))
    if not path.is_file() or path.read_text().split() != names:
        write_file_list(names, path)
    print(f"catdog compare: {len(names)} validation images of {data / 'train'} in {path}")
    return path


def _previous_record(out: Path) -> ComparisonRecord | None:
    try:
        return read_record(out / COMPARE_RECORD) if (out / COMPARE_RECORD).is_file() else None
    except CatDogError:
        return None


def _entry(
    run: PlannedRun, out: Path, status: str, reason: str = "", seconds: float | None = None,
    cpu_seconds: float | None = None, device: str | None = None,
) -> RunRecord:  # fmt: skip
    log = run.run_dir / RUN_LOG
    return RunRecord(
        name=run.spec.name,
        trainer=run.spec.trainer,
        run_dir=run.run_dir.relative_to(out).as_posix(),
        status=status,
        reason=reason,
        log=log.relative_to(out).as_posix() if log.is_file() else None,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        overrides={**run.spec.overrides, **({"args": " ".join(run.spec.args)} if run.spec.args else {})},
        command=[" ".join(command[1:]) for command in run.commands],
        device=device,
    )


def _fingerprint(run: PlannedRun, val_files: Path) -> dict[str, object]:
    """What made a run's outputs: its commands (without the interpreter) and the validation files' hash."""
    digest = hashlib.sha256(val_files.read_bytes()).hexdigest()
    return {"commands": [command[1:] for command in run.commands], "val_files_sha256": digest}


def is_complete(run: PlannedRun, val_files: Path) -> bool:
    """Whether the run folder holds readable metrics and predictions made by the same commands."""
    done = run.run_dir / DONE_FILE
    try:
        if json.loads(done.read_text()) != _fingerprint(run, val_files):
            return False
        read_metrics(run.run_dir / METRICS_FILENAME)
        read_predictions(run.run_dir / PREDICTIONS_FILENAME).score()
    except (OSError, ValueError, CatDogError):
        return False
    return True


def _execute(
    run: PlannedRun, out: Path, tag: str, force: bool, previous: ComparisonRecord | None, slot: Slot
) -> RunRecord:
    val_files = out / VAL_FILES
    if run.missing:
        print(f"{tag}: skipped: {run.missing}")
        return _entry(run, out, "skipped", run.missing)
    if not force and is_complete(run, val_files):
        old = previous.entry(run.spec.name) if previous else None
        print(f"{tag}: complete, not rerun (--force reruns it)")
        return _entry(run, out, "complete", seconds=old.seconds if old else None,
                      cpu_seconds=old.cpu_seconds if old else None, device=old.device if old else None)  # fmt: skip
    stale_files = (DONE_FILE, METRICS_FILENAME, PREDICTIONS_FILENAME, VAL_PREDICTIONS_FILENAME, CALIBRATION_FILENAME)
    for stale in stale_files:  # a failed rerun must not leave old results
        (run.run_dir / stale).unlink(missing_ok=True)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    log = run.run_dir / RUN_LOG
    print(f"{tag}: started ({run.spec.trainer}; {slot.name}; log {log})", flush=True)
    start, cpu = time.perf_counter(), 0.0
    with log.open("w") as handle:
        watch = EpochWatch(run, log)
        for shown, command in _processes(run.commands):
            handle.write("".join(f"$ {' '.join(line)}\n" for line in shown))
            handle.flush()
            status, used = _run_command(command, handle, log, tag, start, watch, slot.env)
            cpu += used
            if status != 0:
                seconds = time.perf_counter() - start
                what = " then ".join(" ".join(line[1:4]) for line in shown)
                reason = f"exit status {status} from `{what}`: {_last_line(log)}"
                print(f"{tag}: FAILED after {format_duration(seconds)}: {reason} (log {log})", flush=True)
                return _entry(run, out, "failed", reason, seconds, cpu, slot.name)
    seconds = time.perf_counter() - start
    if not (run.run_dir / METRICS_FILENAME).is_file() or not (run.run_dir / PREDICTIONS_FILENAME).is_file():
        reason = f"finished without {METRICS_FILENAME} and {PREDICTIONS_FILENAME} in {run.run_dir}"
        print(f"{tag}: FAILED: {reason}", flush=True)
        return _entry(run, out, "failed", reason, seconds, cpu, slot.name)
    (run.run_dir / DONE_FILE).write_text(json.dumps(_fingerprint(run, val_files), indent=2) + "\n")
    accuracy = read_predictions(run.run_dir / PREDICTIONS_FILENAME).score().accuracy
    print(f"{tag}: done in {format_duration(seconds)}, CPU time {format_duration(cpu)} (test accuracy {accuracy:.4f})",
          flush=True)  # fmt: skip
    return _entry(run, out, "done", seconds=seconds, cpu_seconds=cpu, device=slot.name)


def _execute_and_calibrate(
    run: PlannedRun, out: Path, tag: str, force: bool, previous: ComparisonRecord | None, slot: Slot
) -> RunRecord:
    """:func:`_execute` the run, then fit its calibration map when it has results."""
    entry = _execute(run, out, tag, force, previous, slot)
    if entry.status in ("done", "complete"):
        _calibrate(run, tag)
    return entry


def _calibrate(run: PlannedRun, tag: str) -> None:
    """Fit the run's calibration map on its validation predictions; a run that cannot be fitted says why."""
    try:
        calibration = calibrate_run(run.run_dir)
    except CatDogError as err:
        print(f"{tag}: left uncalibrated: {err}", flush=True)
        return
    before, after = calibration.val_before, calibration.val_after
    print(f"{tag}: calibrated ({calibration.map.describe()}; validation NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
          f"ECE {before['ece']:.4f} -> {after['ece']:.4f})", flush=True)  # fmt: skip


def _children_cpu_seconds() -> float:
    """User + system CPU time of the finished child processes (and theirs), from ``getrusage``."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _processes(commands: list[list[str]]) -> list[tuple[list[list[str]], list[str]]]:
    """(commands shown in the log, process to start): consecutive ``python -m catdog`` commands share one
    interpreter (as ``catdog.cli.main`` calls), which saves a torch and Lightning start-up per command."""
    catdog = [sys.executable, "-m", "catdog"]
    if len(commands) > 1 and all(command[:3] == catdog for command in commands):
        argvs = json.dumps([command[3:] for command in commands])
        return [(commands, [sys.executable, "-c", _IN_ONE_PROCESS, argvs])]
    return [([command], command) for command in commands]


def _run_command(
    command: list[str], handle, log: Path, tag: str, start: float, watch: EpochWatch, slot_env: dict[str, str]
) -> tuple[int, float]:
    """Run one command, its output appended to ``log``; print a line when the epoch changes or every 30 s.

    Returns the exit status and the CPU time (user + system) of the process and the children it waited for.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **slot_env}
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    shown, last_print = None, time.perf_counter()
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:  # reaped here, with its own resource usage (runs beside it are not counted)
                process.returncode = os.waitstatus_to_exitcode(status)
                return process.returncode, usage.ru_utime + usage.ru_stime
            if STOP.is_set():
                raise KeyboardInterrupt
            time.sleep(1.0)
            epoch = watch()
            now = time.perf_counter()
            if epoch != shown or now - last_print >= _PROGRESS_EVERY:
                print(f"{tag}: {format_duration(now - start)}{f', {epoch}' if epoch else ''}", flush=True)
                shown, last_print = epoch, now
    except BaseException:
        process.terminate()
        process.wait()
        raise


class EpochWatch:
    """Where a run is, from what its trainer writes as it goes: Keras' ``history.csv`` (a row per epoch),
    Lightning's ``checkpoints/last.ckpt`` (saved at every epoch end; its progress bar reaches a file only at
    the end), Poutyne's progress lines in the log."""

    def __init__(self, run: PlannedRun, log: Path) -> None:
        self.run, self.log = run, log
        self._last_ckpt = run.run_dir / "checkpoints" / "last.ckpt"
        self._mtime = self._last_ckpt.stat().st_mtime_ns if self._last_ckpt.is_file() else None
        self._saved = 0

    def __call__(self) -> str | None:
        epochs = self.run.recipe.epochs
        if self.run.spec.trainer == "keras":
            history = self.run.run_dir / "history.csv"
            done = max(0, len(history.read_text().splitlines()) - 1) if history.is_file() else 0
        elif self.run.spec.trainer == "lightning":
            mtime = self._last_ckpt.stat().st_mtime_ns if self._last_ckpt.is_file() else None
            if mtime != self._mtime:
                self._mtime, self._saved = mtime, self._saved + 1
            done = self._saved
        else:
            epoch = _current_epoch(self.log, self.run.spec.trainer)
            return f"epoch {epoch}" if epoch else None
        return f"{done}/{epochs} epoch(s) done" if done else None


def _current_epoch(log: Path, trainer: str) -> str | None:
    """The last epoch the log mentions (``3/10``, or ``3`` when the total is not printed), 1-based."""
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - 65536))
        tail = handle.read().decode(errors="replace")
    matches = _EPOCH.findall(_ANSI.sub("", tail))
    if not matches:
        return None
    with_total = [match for match in matches if match[1]]  # "Epoch: 3/10" over a message like "Epoch 3: saved"
    number, total = (with_total or matches)[-1]
    offset = 1 if trainer == "lightning" else 0  # Lightning's progress bar counts epochs from 0: "Epoch 0/9"
    return f"{int(number) + offset}/{int(total) + offset}" if total else str(int(number) + offset)


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "(no output)"


def _write_results(out: Path, data: Path) -> None:
    from catdog.evaluation.report.sections import write_report

    found = collect([out])
    if not found.runs:
        print(f"catdog compare: no run has results yet; see {out / COMPARE_RECORD}", file=sys.stderr)
        return
    write_report(found, out / "results.md", data_dir=data)
