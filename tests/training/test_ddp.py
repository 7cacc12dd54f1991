"""Distributed runs (gloo processes on the CPU, started by torchrun) against one process as the ground truth.

The network is timm's ``test_efficientnet_gn`` (GroupNorm, no BatchNorm statistics that differ per process),
without dropout, augmentation or a changing learning rate, so one process with batch 2B and two with batch B
must end a fit with the same weights. The generated dataset has 53 training, 9 validation and 19 test images
(odd-sized splits: a sampler that pads or drops an image shows). The torchrun processes run several ``catdog``
commands each (``tests/catdog_commands.py``), to pay the start-up of torch once per process.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from train_helpers import CSV_ONLY, ROOT, SCRATCH, fit_options, fused_sample

from catdog.cli import main
from catdog.data.datamodule import EpochSampler, ShardSampler
from catdog.evaluation.compare.devices import parse_devices
from catdog.evaluation.report.collect import read_record
from catdog.metrics import read_predictions
from catdog.training.distributed import TimmSyncBatchNorm

DDP = str(ROOT / "configs" / "trainer" / "ddp.yaml")
GPU = str(ROOT / "configs" / "trainer" / "gpu.yaml")
COMMANDS = str(ROOT / "tests" / "catdog_commands.py")
#: No random part and a flat learning rate: two processes of batch B must train as one of batch 2B.
EXACT = (
    "--model.model_name", "test_efficientnet_gn", "--model.drop_rate", "0", "--data.augment", "false",
    "--model.warmup_epochs", "0", "--model.min_lr_ratio", "1.0", "--trainer.enable_model_summary", "false",
)  # fmt: skip
#: predictions.csv and predict.csv write P(dog) with 6 decimals: two float32 runs that sum in another order may
#: round to neighbouring last digits (measured with oneDNN limited to AVX2: 1.0000000000287557e-06).
TOLERANCE = 1.5e-6
BATCH = 8  # per process; 53 training images: 3 steps per epoch either way


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """53 training, 9 validation and 19 test images at 40 px."""
    root = tmp_path_factory.mktemp("ddp-data")
    return fused_sample(root, cats=41, dogs_per_breed=5, breeds=8, size=40, seed=0, cat_train=32, cat_test=9)


def options(data: Path, run_dir: Path, batch: int, epochs: int, *extra: str) -> list[str]:
    return fit_options(data, run_dir, *EXACT, *extra, image_size=32, batch_size=batch, max_epochs=epochs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _first_error(output: str) -> str:
    """The output from the first traceback on (where the failing process says why), else its end."""
    start = output.find("Traceback")
    return output[start : start + 6000] if start >= 0 else output[-4000:]


def torchrun(commands: list[list[str]], cwd: Path, nodes: int = 1) -> None:
    """``commands`` in two processes: one node of two, or ``nodes`` "nodes" of one process each on localhost."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    base = [sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1:
        launches = [[*base, "--standalone", "--nproc-per-node", "2"]]
    else:
        where = ["--nnodes", str(nodes), "--nproc-per-node", "1", "--master-addr", "127.0.0.1"]
        port = str(free_port())
        launches = [[*base, *where, "--master-port", port, "--node-rank", str(rank)] for rank in range(nodes)]
    processes = [
        subprocess.Popen([*launch, COMMANDS, json.dumps(commands)], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for launch in launches
    ]  # fmt: skip
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, _first_error(output)


def state_dict(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["state_dict"]


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def validation_metrics(run_dir: Path, version: int) -> dict[str, float]:
    """The ``val_*`` values of the last row that has them in a CSV log of a run dir."""
    with (run_dir / "lightning_logs" / f"version_{version}" / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_loss")]
    return {key: float(value) for key, value in rows[-1].items() if key.startswith("val_") and value}


def fit_logged(run_dir: Path, key: str) -> dict[int, float]:
    """``key`` by epoch from the fit's CSV log (version 0; later versions are validate and test)."""
    with (run_dir / "lightning_logs" / "version_0" / "metrics.csv").open() as handle:
        return {int(row["epoch"]): float(row[key]) for row in csv.DictReader(handle) if row.get(key)}


def predict_rows(run_dir: Path) -> list[tuple[str, float]]:
    with (run_dir / "predict.csv").open() as handle:
        return [(row["path"], float(row["p_dog"])) for row in csv.DictReader(handle)]


# samplers and layers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [53, 10, 7])
def test_two_shards_of_batch_b_read_the_batches_of_one_process_of_batch_2b(size: int) -> None:
    batch = 3
    for epoch in (0, 1):
        whole = list(torch.utils.data.BatchSampler(EpochSampler(size, 5, epoch), 2 * batch, drop_last=True))
        shards = [
            list(torch.utils.data.BatchSampler(EpochSampler(size, 5, epoch, 2, rank), batch, drop_last=True))
            for rank in (0, 1)
        ]
        assert len(shards[0]) == len(shards[1]) == len(whole)
        for step, images in enumerate(whole):
            assert sorted(images) == sorted(shards[0][step] + shards[1][step])
        evaluated = [list(ShardSampler(size, 2, rank)) for rank in (0, 1)]
        assert sorted(evaluated[0] + evaluated[1]) == list(range(size))  # every image once, no padding


def test_sync_batchnorm_keeps_every_layer_of_timm_whole() -> None:
    from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct

    torch.manual_seed(0)
    original = timm.create_model("test_efficientnet", num_classes=2).eval()
    for layer in original.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):  # statistics that matter
            layer.running_mean.normal_(0, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
    synced = TimmSyncBatchNorm().apply(copy.deepcopy(original)).eval()
    norms = {name for name, m in original.named_modules() if isinstance(m, BatchNormAct2d)}
    assert norms and all(isinstance(synced.get_submodule(name), SyncBatchNormAct) for name in norms)
    reverted = TimmSyncBatchNorm().revert(copy.deepcopy(synced)).eval()
    assert all(type(reverted.get_submodule(name)) is BatchNormAct2d for name in norms)

    outputs: dict[tuple[str, str], torch.Tensor] = {}
    for tag, model in (("timm", original), ("sync", synced), ("reverted", reverted)):
        for name in norms:
            module = model.get_submodule(name)
            module.register_forward_hook(lambda m, i, o, key=(tag, name): outputs.__setitem__(key, o.detach()))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for model in (original, synced, reverted):
            model(images)
    for name in norms:  # each layer's eval output, activation included
        assert torch.equal(outputs["sync", name], outputs["timm", name]), name
        assert torch.equal(outputs["reverted", name], outputs["timm", name]), name


# what the CLI refuses, and the GPU recipe on the CPU ------------------------------------------------------
def test_sync_batchnorm_on_the_cpu_is_one_clear_error(dataset: Path, tmp_path: Path, capsys) -> None:
    argv = options(dataset, tmp_path / "run", BATCH, 1, "-c", DDP, "--trainer.devices", "2",
                   "--trainer.sync_batchnorm", "true")  # fmt: skip
    assert main(["fit", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("catdog fit: error: trainer.sync_batchnorm true: torch's SyncBatchNorm runs on GPUs")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_a_gpu_asked_for_but_absent_is_one_clear_error(dataset: Path, tmp_path: Path, capsys) -> None:
    argv = options(dataset, tmp_path / "run", BATCH, 1, "-c", GPU, "--trainer.accelerator", "gpu")
    assert main(["fit", *argv]) == 2
    assert "trainer.accelerator gpu: no CUDA GPU is visible" in capsys.readouterr().err


def test_the_gpu_recipe_runs_on_the_cpu_with_its_gpu_parts_off(dataset: Path, tmp_path: Path, capsys) -> None:
    limits = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    argv = fit_options(dataset, tmp_path / "run", *EXACT, *limits, image_size=32, batch_size=BATCH, max_epochs=1,
                       configs=(SCRATCH, GPU, CSV_ONLY))  # fmt: skip
    assert main(["fit", *argv, "--trainer.accelerator", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "data.pin_memory: off on the CPU" in out and "model.channels_last: GPU-only, off on cpu" in out
    hparams = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]
    assert hparams["channels_last"] is True and hparams["compile"] is False


def test_poutyne_refuses_a_distributed_trainer_config(dataset: Path, tmp_path: Path, capsys) -> None:
    from train_helpers import POUTYNE

    argv = ["-c", SCRATCH, "-c", DDP, "-c", POUTYNE, "--data.data_dir", str(dataset), "--poutyne.run_dir",
            str(tmp_path / "run"), "--trainer.devices", "2"]  # fmt: skip
    assert main(["poutyne", *argv]) == 2
    assert "catdog poutyne trains in one process" in capsys.readouterr().err


# two processes against one ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two processes: fit 2 epochs with batch B, then validate, test and predict ``last.ckpt``."""
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    argv = options(dataset, run_dir, BATCH, 2, "-c", DDP, "--trainer.accelerator", "cpu", "--trainer.devices", "2")
    evaluate = [*argv, "--ckpt_path", "last"]
    torchrun([["fit", *argv], ["validate", *evaluate], ["test", *evaluate], ["predict", *evaluate]], run_dir.parent)
    return run_dir


@pytest.fixture(scope="module")
def one_process_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process: fit 2 epochs with batch 2B."""
    run_dir = tmp_path_factory.mktemp("one") / "run"
    assert main(["fit", *options(dataset, run_dir, 2 * BATCH, 2)]) == 0
    return run_dir


def test_two_processes_of_batch_b_train_as_one_process_of_batch_2b(ddp_run: Path, one_process_run: Path) -> None:
    two, one = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=False) for r in (ddp_run, one_process_run))
    assert two["global_step"] == one["global_step"] == 6
    assert largest_difference(two["state_dict"], one["state_dict"]) < 1e-4
    for key in ("train_loss_epoch", "val_loss", "val_acc"):  # logged over every process's images
        both = fit_logged(ddp_run, key), fit_logged(one_process_run, key)
        assert sorted(both[0]) == sorted(both[1]) == [0, 1], key
        assert all(abs(both[0][e] - both[1][e]) < 1e-4 for e in (0, 1)), (key, both)


def test_distributed_validate_test_and_predict_equal_one_process(dataset: Path, ddp_run: Path, tmp_path: Path) -> None:
    argv = options(dataset, tmp_path, BATCH, 2, "--ckpt_path", str(ddp_run / "checkpoints" / "last.ckpt"))
    for command in ("validate", "test", "predict"):
        assert main([command, *argv]) == 0

    one, two = validation_metrics(tmp_path, 0), validation_metrics(ddp_run, 1)  # validate: the first log here
    assert one.keys() == two.keys() >= {"val_loss", "val_acc", "val_auroc"}
    assert all(abs(one[k] - two[k]) < 1e-6 for k in one), (one, two)
    assert abs(fit_logged(ddp_run, "val_loss")[1] - one["val_loss"]) < 1e-6  # the fit's last validation

    for name, count in (("predictions.csv", 19), ("val_predictions.csv", 9)):  # test, and validation for calibrate
        expected, got = read_predictions(tmp_path / name), read_predictions(ddp_run / name)
        assert len(got.files) == len(set(got.files)) == count, name
        assert list(got.files) == list(expected.files) and list(got.labels) == list(expected.labels), name
        assert max(abs(a - b) for a, b in zip(got.p_dog, expected.p_dog, strict=True)) < TOLERANCE, name
    rows, reference = predict_rows(ddp_run), predict_rows(tmp_path)
    assert [path for path, _ in rows] == [path for path, _ in reference] and len({p for p, _ in rows}) == 19
    assert max(abs(a[1] - b[1]) for a, b in zip(rows, reference, strict=True)) < TOLERANCE


def test_two_nodes_on_localhost_resume_as_the_uninterrupted_fit(dataset: Path, ddp_run: Path, tmp_path: Path) -> None:
    """Two "nodes" of one process each (torchrun --nnodes 2): a 1-epoch fit, then resumed to 2 epochs."""
    run_dir = tmp_path / "nodes"
    nodes = ["-c", DDP, "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2"]
    first, resumed = options(dataset, run_dir, BATCH, 1, *nodes), options(dataset, run_dir, BATCH, 2, *nodes)
    torchrun([["fit", *first], ["fit", *resumed, "--ckpt_path", "last"]], tmp_path, nodes=2)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    assert largest_difference(state_dict(run_dir), state_dict(ddp_run)) <= 1e-6


# compare on two CPU slots --------------------------------------------------------------------------------------
def test_compare_devices_parse() -> None:
    assert [s.name for s in parse_devices("cpu:2", cpus=4)] == ["cpu slot 1/2 (2 threads)", "cpu slot 2/2 (2 threads)"]
    assert parse_devices("cpu:2", threads=1)[0].env["OMP_NUM_THREADS"] == "1"
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in parse_devices("cuda:0,2")] == ["0", "2"]
    for bad in ("cpu:0", "cuda:a", "tpu:1", "cuda:1,1"):
        with pytest.raises(Exception, match="--devices"):
            parse_devices(bad)


def test_compare_on_two_cpu_slots_predicts_as_one_after_the_other(dataset: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "configs" / "compare.yaml").read_text())
    config["recipe"].update(image_size=32, epochs=1, batch_size=8, steps_per_epoch=1, num_workers=0, accelerator="cpu")
    config["configs"] = {key: str(ROOT / "configs" / name) for key, name in config["configs"].items()}
    config["runs"] = [
        {"name": "a", "trainer": "lightning", "args": list(EXACT[:2])},
        {"name": "b", "trainer": "lightning", "overrides": {"seed": 7}, "args": list(EXACT[:2])},
        {"name": "broken", "trainer": "lightning", "args": ["--model.no_such_option", "1"]},
    ]
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    common = ["-c", str(path), "--data", str(dataset), "--threads", "1"]
    assert main(["compare", *common, "--out", str(tmp_path / "slots"), "--devices", "cpu:2"]) == 1  # broken fails
    assert main(["compare", *common, "--out", str(tmp_path / "sequential"), "--only", "a", "b"]) == 0

    record = read_record(tmp_path / "slots" / "compare.json")
    assert {e.name: e.status for e in record.runs} == {"a": "done", "b": "done", "broken": "failed"}
    assert {e.device for e in record.runs} == {"cpu slot 1/2 (1 thread)", "cpu slot 2/2 (1 thread)"}
    assert "devices of the runs: a on cpu slot" in (tmp_path / "slots" / "results.md").read_text()
    for name in ("a", "b"):
        parallel = read_predictions(tmp_path / "slots" / name / "predictions.csv")
        sequential = read_predictions(tmp_path / "sequential" / name / "predictions.csv")
        assert list(parallel.files) == list(sequential.files) and list(parallel.p_dog) == list(sequential.p_dog)
