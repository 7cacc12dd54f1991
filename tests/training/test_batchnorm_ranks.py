"""BatchNorm statistics in a distributed run: every process ends with the statistics one process gets from all
the batches, so the checkpoint rank 0 saves is the model every process evaluated; and the collapse warning is about
the whole validation split, said once.

Two CPU processes (gloo) re-estimate the statistics of the same timm network (``BatchNormAct2d`` layers) on
their own training batches; the ground truth is one process re-estimating them on the batches of both.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from catdog.training.batchnorm import average_batchnorm_statistics, batchnorm_layers, recalibrate_batchnorm

WORLD = 2
BATCHES_PER_RANK = 2
BATCH = 4
SIZE = 32


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", num_classes=2)


def batches(rank: int) -> list[torch.Tensor]:
    """Rank ``rank``'s training batches: each rank its own images, of its own brightness."""
    generator = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(BATCH, 3, SIZE, SIZE, generator=generator) + rank for _ in range(BATCHES_PER_RANK)]


def statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    return [torch.cat([layer.running_mean, layer.running_var]).clone() for layer in batchnorm_layers(model)]


def first_layer_values() -> int:
    """Values per channel the first BatchNorm layer sees from one rank's batches."""
    seen: list[int] = []
    model = network()
    layer = batchnorm_layers(model)[0]
    hook = layer.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].numel() // inputs[0].shape[1]))
    model.train()
    with torch.no_grad():
        model(batches(0)[0])
    hook.remove()
    return seen[0] * BATCHES_PER_RANK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, out: str, min_values: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = network()
        used = recalibrate_batchnorm(model, batches(rank), min_values=min_values)
        recalibrated = statistics(model)
        for i, layer in enumerate(batchnorm_layers(model)):  # each rank drifts its own way, then they are averaged
            layer.running_mean.add_(rank + i)
            layer.running_var.mul_(1 + rank)
        drifted = statistics(model)
        assert average_batchnorm_statistics(model) == WORLD
        torch.save(
            {"used": used, "recalibrated": recalibrated, "drifted": drifted, "averaged": statistics(model)},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], int]:
    out = tmp_path_factory.mktemp("ranks")
    # Each rank alone sees half of this in the first layer, both together all of it: the decision to keep a
    # layer's old statistics must be made on the values of every process.
    min_values = first_layer_values() * WORLD
    mp.start_processes(_rank, args=(free_port(), str(out), min_values), nprocs=WORLD, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)], min_values


def test_every_rank_re_estimates_what_one_process_gets_from_all_the_batches(ranks: tuple[list[dict], int]) -> None:
    results, min_values = ranks
    reference = network()
    before = statistics(reference)
    used = recalibrate_batchnorm(reference, [b for r in range(WORLD) for b in batches(r)], min_values=min_values)
    expected = statistics(reference)
    assert [r["used"] for r in results] == [used] * WORLD == [WORLD * BATCHES_PER_RANK] * WORLD
    changed = [i for i, (old, new) in enumerate(zip(before, expected, strict=True)) if not torch.equal(old, new)]
    kept = [i for i in range(len(expected)) if i not in changed]
    assert 0 in changed and kept, (changed, kept)  # the first layer re-estimated on both ranks' values; deep ones kept
    for result in results:
        for i, (got, want) in enumerate(zip(result["recalibrated"], expected, strict=True)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"layer {i}")
    # One rank's batches alone would give other statistics (the ranks' images differ): the averaging did the work.
    alone = network()
    recalibrate_batchnorm(alone, batches(0), min_values=0)
    assert not torch.allclose(statistics(alone)[0], expected[0], atol=1e-3)


def test_averaging_gives_every_rank_the_mean_of_their_statistics(ranks: tuple[list[dict], int]) -> None:
    results, _ = ranks
    for i in range(len(results[0]["drifted"])):
        mean = torch.stack([r["drifted"][i].double() for r in results]).mean(0).float()
        assert not torch.allclose(results[0]["drifted"][i], results[1]["drifted"][i])
        for result in results:
            torch.testing.assert_close(result["averaged"][i], mean, rtol=1e-5, atol=1e-5, msg=f"layer {i}")


def test_a_single_process_is_left_alone() -> None:
    model = network()
    before = copy.deepcopy(statistics(model))
    assert average_batchnorm_statistics(model) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, statistics(model), strict=True))


#: Each rank's validation share (P(dog), label): every prediction is Dog and the ranking is perfect, so each share
#: alone and the whole split look collapsed, each at its own majority-class share: 0.600, 0.800, together 0.700.
VAL_SHARES = (
    ([0.6, 0.7, 0.8, 0.9, 0.95], [0, 0, 1, 1, 1]),
    ([0.6, 0.8, 0.85, 0.9, 0.97], [0, 1, 1, 1, 1]),
)


def _warn_rank(rank: int, port: int, out: str) -> None:
    import logging
    from types import SimpleNamespace

    from catdog.training.module import CatDogClassifier

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    handler = logging.FileHandler(Path(out) / f"rank{rank}.log")
    logging.getLogger("catdog.training.module").addHandler(handler)
    try:
        model = CatDogClassifier(model_name="test_efficientnet", image_size=SIZE)
        model._trainer = SimpleNamespace(  # type: ignore[assignment]
            sanity_checking=False, current_epoch=0, world_size=WORLD, is_global_zero=rank == 0
        )
        p_dog, labels = VAL_SHARES[rank]
        model._val_outputs = [(torch.tensor(p_dog), torch.tensor(labels))]
        model.on_validation_epoch_end()
    finally:
        handler.close()
        dist.destroy_process_group()


def test_the_collapse_warning_is_about_the_whole_validation_split_and_said_once(tmp_path: Path) -> None:
    mp.start_processes(_warn_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    said = [(tmp_path / f"rank{rank}.log").read_text() for rank in range(WORLD)]
    assert "majority-class share 0.700" in said[0] and "AUROC is 1.000" in said[0], said
    assert said[1] == ""  # rank 1 took part in the gathering but says nothing
