"""Training throughput: a plain PyTorch loop vs Lightning ``fit`` vs data loading alone, in one run.

    python benchmarks/train_throughput.py --image-size 64 --batch-size 32 --steps 20
    python benchmarks/train_throughput.py --quick     # a tiny model for a few steps: checks that it runs

Every training runner trains the same network (:func:`catdog.training.network.build_network`) with the same
optimizer and schedule (:func:`catdog.training.optim.build_optimizer`), batch size, thread count and batches (decoded
and augmented once by :class:`catdog.data.CatDogDataModule`, then kept in memory, so only the training loop
differs). The first ``--warmup`` steps are not timed; runners alternate over ``--rounds`` rounds and each
figure is the median, so that load from other processes hits every runner alike. The data figure is the
DataModule's own train loader (decode + albumentations + collate) with ``--workers`` worker processes.

Goals: Lightning >= 0.95x the plain loop; data loading >= 2x the training rate.

To add a trainer (e.g. Poutyne), write ``def run_x(bench: Bench) -> float`` returning images/s and add it
to :data:`RUNNERS`; ratios are printed against ``plain``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import parse_args
from torch.nn import functional as F

#: ``--quick``: a tiny timm test model, a few small batches, one round.
QUICK = dict(model="test_efficientnet", image_size=32, batch_size=8, steps=2, warmup=1, workers=0, rounds=1,
             images_per_class=16)  # fmt: skip


@dataclass
class Bench:
    """What every runner shares."""

    model_name: str
    image_size: int
    batch_size: int
    steps: int  # timed steps
    warmup: int  # untimed steps before them
    threads: int
    batches: list[tuple[torch.Tensor, torch.Tensor]]  # warmup + steps batches, in memory

    def network(self) -> torch.nn.Module:
        from catdog.training.network import build_network

        torch.manual_seed(0)
        return build_network(self.model_name)

    def optimizer(self, network: torch.nn.Module) -> tuple[torch.optim.Optimizer, object]:
        from catdog.training.optim import build_optimizer

        return build_optimizer(network, 1e-3, 0.05, 1.0, 0.01, total_steps=len(self.batches), epochs=1)


def run_plain(bench: Bench) -> float:
    """A hand-written PyTorch training loop: forward, loss, backward, AdamW step, schedule step."""
    network = bench.network().train()
    optimizer, scheduler = bench.optimizer(network)
    start = 0.0
    for step, (images, labels) in enumerate(bench.batches):
        if step == bench.warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(network(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()  # type: ignore[attr-defined]
    return bench.steps * bench.batch_size / (time.perf_counter() - start)


def run_lightning(bench: Bench) -> float:
    """``Trainer.fit`` of :class:`catdog.training.module.CatDogClassifier` (its metrics and logging included)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from catdog.training.module import CatDogClassifier

    class Timer(pl.Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if trainer.global_step == bench.warmup and not self.start:
                self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
            self.end = time.perf_counter()

    torch.manual_seed(0)
    model = CatDogClassifier(bench.model_name, image_size=bench.image_size, lr=1e-3, label_smoothing=0.0)
    timer = Timer()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    loader = DataLoader(bench.batches, batch_size=None, shuffle=False)
    trainer.fit(model, train_dataloaders=loader)
    return bench.steps * bench.batch_size / (timer.end - timer.start)


def run_poutyne(bench: Bench) -> float:
    """``poutyne.Model.fit_generator`` as ``catdog poutyne`` builds it (accuracy metric, per-step schedule)."""
    import poutyne

    from catdog.poutyne.callbacks import StepScheduler
    from catdog.poutyne.trainer import ClassifierLoss, make_model

    class Timer(poutyne.Callback):
        start = end = 0.0

        def on_train_batch_begin(self, batch_number: int, logs: dict) -> None:
            if batch_number == bench.warmup + 1:  # Poutyne counts batches from 1
                self.start = time.perf_counter()

        def on_train_end(self, logs: dict) -> None:
            self.end = time.perf_counter()

    network = bench.network()
    optimizer, scheduler = bench.optimizer(network)
    model = make_model(
        network, optimizer, ClassifierLoss(torch.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()), device="cpu"
    )
    timer = Timer()
    model.fit_generator(bench.batches, epochs=1, callbacks=[StepScheduler(scheduler), timer], verbose=False)
    return bench.steps * bench.batch_size / (timer.end - timer.start)


#: Named training runners; the first is the baseline of the ratios.
RUNNERS: dict[str, Callable[[Bench], float]] = {"plain": run_plain, "lightning": run_lightning, "poutyne": run_poutyne}


def data_rate(datamodule: object, batches: int) -> float:
    """Images/s of the DataModule's train loader (decode + augment + collate) alone."""
    loader = datamodule.train_dataloader()  # type: ignore[attr-defined]
    iterator = iter(loader)
    next(iterator)  # worker start-up is not timed
    count, start = 0, time.perf_counter()
    while count < batches * loader.batch_size:
        try:
            images, _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        count += len(images)
    return count / (time.perf_counter() - start)


def make_dataset(out: Path, image_size: int, images_per_class: int) -> Path:
    from catdog.data.fusion import fuse
    from catdog.data.sample_data import generate

    breeds = 8
    sources = generate(out / "kaggle", cats=images_per_class + 8, dogs_per_breed=images_per_class // breeds + 2,
                       breeds=breeds, size=image_size, seed=0)  # fmt: skip
    dataset = out / "dataset"
    fuse(sources.cats_source, sources.dogs_source, dataset, cat_train=images_per_class, cat_test=8, seed=0,
         progress=False)  # fmt: skip
    return dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tf_efficientnetv2_b2")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per runner")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the data figure")
    parser.add_argument("--data-dir", type=Path, help="a fused dataset (default: generate one)")
    parser.add_argument("--images-per-class", type=int, default=160, help="training cats of the generated data")
    parser.add_argument("--only", nargs="*", choices=sorted(RUNNERS), help="run only these trainers")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    args = parse_args(parser, argv, QUICK)

    import lightning.pytorch as pl

    from catdog.data import CatDogDataModule
    from catdog.training.network import preprocess_config_for

    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or make_dataset(Path(tmp), args.image_size, args.images_per_class)
        dm = CatDogDataModule(data_dir, image_size=args.image_size, batch_size=args.batch_size,
                              num_workers=args.workers, persistent_workers=args.workers > 0, val_fraction=0.1,
                              preprocess=preprocess_config_for(args.model, args.image_size))  # fmt: skip
        dm.setup("fit")
        total = args.warmup + args.steps
        batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        while len(batches) < total:
            batches += [(x, y) for x, y in dm.train_dataloader() if len(y) == args.batch_size]
        bench = Bench(args.model, args.image_size, args.batch_size, args.steps, args.warmup, args.threads,
                      batches[:total])  # fmt: skip

        print(f"model {args.model}, {args.image_size} px, batch {args.batch_size}, {args.steps} timed steps "
              f"(+{args.warmup} warm-up), {args.threads} threads, median of {args.rounds} rounds")  # fmt: skip
        names = [name for name in RUNNERS if not args.only or name in args.only]
        samples: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.rounds):  # interleaved, rotating order: load changes hit every runner alike
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                gc.collect()  # the previous runner's garbage is not freed in this one's timed steps
                samples[name].append(RUNNERS[name](bench))
        rates = {name: statistics.median(values) for name, values in samples.items()}
        loading = statistics.median(data_rate(dm, batches=max(8, args.steps)) for _ in range(args.rounds))
    report(rates, loading, args.workers)
    return 0


def report(rates: dict[str, float], loading: float, workers: int) -> None:
    """Images/s of each runner and of data loading, with their ratios and goals."""
    baseline = rates.get("plain")
    print(f"{'run':<28}{'images/s':>10}{'ratio':>10}")
    for name, rate in rates.items():
        ratio = f"{rate / baseline:.3f}x" if baseline else "-"
        print(f"{'train: ' + name:<28}{rate:>10.1f}{ratio:>10}")
    train_rate = rates.get("lightning", baseline or 0.0)
    print(f"{f'data: decode+augment ({workers} workers)':<28}{loading:>10.1f}"
          f"{(f'{loading / train_rate:.2f}x' if train_rate else '-'):>10}  (vs lightning training)")  # fmt: skip
    for name in ("lightning", "poutyne"):
        if baseline and name in rates:
            print(f"{name} / plain{' ' * (9 - len(name))} = {rates[name] / baseline:.3f} (goal >= 0.95)")
    if train_rate:
        print(f"data / training   = {loading / train_rate:.2f} (goal >= 2)")


if __name__ == "__main__":
    raise SystemExit(main())
