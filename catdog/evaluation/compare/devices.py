"""Where ``catdog compare`` runs its runs: ``--devices``, one run per device at a time.

* ``cuda:0,1`` (or ``0,1``): one run per listed GPU at a time, each run's processes seeing only its GPU
  (``CUDA_VISIBLE_DEVICES``);
* ``cpu:N``: N runs at a time on the CPU, each with ``--threads`` threads (default: the CPUs split evenly
  between the N slots), set through ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (torch) and TensorFlow's
  ``TF_NUM_INTRAOP_THREADS``/``TF_NUM_INTEROP_THREADS``; a run's numbers depend on its thread count, not on
  what runs beside it, so ``cpu:2`` gives the predictions of ``cpu:1`` with the same ``--threads``;
* nothing: one run after the other in the environment as it is (the default).

:func:`run_in_slots` executes independent jobs on the slots, each job on the first free slot, results in the
jobs' order; a job's failure is its own result, so the others go on.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from catdog import CatDogError

Job = TypeVar("Job")
Result = TypeVar("Result")

#: Set when the comparison is interrupted: every running job stops its process.
STOP = threading.Event()


@dataclass(frozen=True)
class Slot:
    """One device a run can use: its name (recorded per run) and the environment its processes get."""

    name: str
    env: dict[str, str] = field(default_factory=dict)


def parse_devices(spec: str | None, threads: int | None = None, cpus: int | None = None) -> list[Slot]:
    """The slots of a ``--devices`` value (see the module docstring); ``[Slot("default")]`` without one."""
    cpus = cpus or os.cpu_count() or 1
    if threads is not None and threads < 1:
        raise CatDogError(f"--threads must be at least 1, got {threads}")
    if not spec:
        if threads is None:
            return [Slot("default")]
        return [Slot(f"cpu ({_plural(threads, 'thread')})", _thread_env(threads))]
    kind, _, rest = spec.partition(":") if ":" in spec else ("cuda", "", spec)
    kind = kind.strip().lower()
    if kind == "cpu":
        try:
            count = int(rest)
        except ValueError:
            count = 0
        if count < 1:
            raise CatDogError(f"--devices {spec}: expected cpu:N with N >= 1 runs at a time, e.g. cpu:2")
        per_run = threads or max(1, cpus // count)
        env = {**_thread_env(per_run), "CUDA_VISIBLE_DEVICES": ""}
        return [Slot(f"cpu slot {i + 1}/{count} ({_plural(per_run, 'thread')})", env) for i in range(count)]
    if kind not in ("cuda", "gpu"):
        raise CatDogError(f"--devices {spec}: expected cpu:N or GPU ids (cuda:0,1 or 0,1)")
    ids = [item.strip() for item in rest.split(",") if item.strip()]
    if not ids or not all(item.isdigit() for item in ids) or len(set(ids)) != len(ids):
        raise CatDogError(f"--devices {spec}: expected distinct GPU ids, e.g. cuda:0,1")
    extra = _thread_env(threads) if threads else {}
    return [Slot(f"cuda:{gpu}", {**extra, "CUDA_VISIBLE_DEVICES": gpu}) for gpu in ids]


def run_in_slots(jobs: Sequence[Job], slots: Sequence[Slot], work: Callable[[Job, Slot], Result]) -> list[Result]:
    """``work(job, slot)`` for every job, at most one job per slot at a time; results in the jobs' order."""
    if len(slots) <= 1 or len(jobs) <= 1:
        return [work(job, slots[0] if slots else Slot("default")) for job in jobs]
    STOP.clear()
    free: queue.Queue[Slot] = queue.Queue()
    for slot in slots:
        free.put(slot)

    def on_a_free_slot(job: Job) -> Result:
        slot = free.get()
        try:
            return work(job, slot)
        finally:
            free.put(slot)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = [pool.submit(on_a_free_slot, job) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            STOP.set()  # the running jobs stop their processes
            for future in futures:
                future.cancel()
            raise


def _thread_env(threads: int) -> dict[str, str]:
    value = str(threads)
    return {
        "OMP_NUM_THREADS": value,
        "MKL_NUM_THREADS": value,
        "TF_NUM_INTRAOP_THREADS": value,
        "TF_NUM_INTEROP_THREADS": "1",
    }


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"
