"""The Poutyne parity trainer: CLI run and outputs, early stopping, SaveModel uploads, parity with Lightning."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import fsspec
import pytest
import torch

from catdog.cli import main
from catdog.metrics import read_metrics
from catdog.model import build_network
from catdog.poutyne_trainer import SaveModel, prepare, train_poutyne, upload_file

os.environ.setdefault("WANDB_MODE", "offline")

MODEL = "test_efficientnet"  # a ~0.1M-parameter timm test network: fast on CPU
TINY = dict(model_name=MODEL, image_size=32, batch_size=16, num_workers=0, seed=42)
REPO = Path(__file__).resolve().parents[1]


def _flags(**options: object) -> list[str]:
    return [item for key, value in options.items() for item in (f"--{key}", str(value).lower())]


def _test_size(dataset: Path) -> int:
    return sum(1 for p in (dataset / "test").rglob("*.jpg"))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-class network (head included, so losses depend on the input) saved as a timm state dict."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / f"{MODEL}.pth"
    torch.save(build_network(MODEL, zero_init_head=False).state_dict(), path)
    return path


def _test_accuracy(weights: Path, dataset: Path) -> float:
    """Accuracy on ``dataset/test`` of a network built from ``weights``, computed without Poutyne."""
    setup = prepare(dataset, pretrained_file=str(weights), **TINY)
    datamodule = setup.datamodule
    datamodule.setup("test")
    network = setup.network.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in datamodule.test_dataloader():
            correct += int((network(images).argmax(dim=1) == labels).sum())
            total += len(labels)
    return correct / total


@pytest.mark.slow
def test_cli_trains_and_writes_every_output(fused_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    uri = "memory://catdog-test/models"
    status = main(
        [
            "poutyne",
            "-c",
            str(REPO / "configs" / "poutyne.yaml"),
            "--data_dir",
            str(fused_dataset),
            *_flags(**TINY),
            *_flags(epochs=2, steps_per_epoch=2, out_dir=out, name="cli", verbose=False, wandb=True),
            "--upload_uri",
            uri,
        ]
    )
    assert status == 0
    run_dir = out / "cli"

    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert {"loss", "acc", "val_loss", "val_acc", "lr_group_0", "lr_group_1"} <= set(rows[0])
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert float(rows[1]["val_loss"]) == pytest.approx(history[1]["val_loss"])

    metrics = read_metrics(run_dir / "metrics.json")
    assert metrics.framework == "poutyne" and metrics.model == MODEL and not metrics.pretrained
    assert metrics.epochs == 2 and metrics.train_seconds > 0
    assert sum(map(sum, metrics.confusion_matrix)) == _test_size(fused_dataset)
    assert metrics.num_params == sum(p.numel() for p in build_network(MODEL).parameters())

    best, last = run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"
    assert best.is_file() and last.is_file()
    assert metrics.checkpoint == str(best.resolve())
    # The best checkpoint is the model that was tested: it reproduces the reported accuracy.
    assert _test_accuracy(best, fused_dataset) == pytest.approx(metrics.accuracy, abs=1e-6)

    saved = run_dir / "saved" / "model_epoch1.pth"
    assert saved.is_file()
    memory = fsspec.filesystem("memory")
    assert memory.cat_file("/catdog-test/models/model_epoch1.pth") == saved.read_bytes()
    memory.rm("/catdog-test", recursive=True)

    assert list((run_dir / "wandb").glob("offline-run-*")), "the W&B logger wrote no offline run"


@pytest.mark.slow
def test_early_stopping_ends_the_run_and_saves_to_a_file_uri(fused_dataset: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote" / "models"
    run = train_poutyne(
        str(fused_dataset),
        **TINY,
        epochs=6,
        steps_per_epoch=1,
        monitor="val_acc",
        patience=1,
        min_delta=100.0,  # val_acc is in percent: no epoch after the first can improve by more than 100
        save_model_epoch=5,  # after the last epoch run: SaveModel saves at the end instead
        upload_uri=f"file://{remote}",
        out_dir=str(tmp_path / "runs"),
        name="early",
        wandb=False,
        verbose=False,
    )
    assert run.stopped_early
    assert len(run.history) == 2 and run.metrics.epochs == 2
    assert read_metrics(run.metrics_path).epochs == 2
    assert run.saved_model == run.run_dir / "saved" / "model_epoch2.pth"
    uploaded = remote / "model_epoch2.pth"
    assert run.uploaded_to is not None and run.uploaded_to.endswith(str(uploaded))
    assert uploaded.read_bytes() == run.saved_model.read_bytes()
    restored = build_network(MODEL, pretrained_file=uploaded)
    final = torch.load(run.last_checkpoint, weights_only=True)
    assert all(torch.equal(value, final[key]) for key, value in restored.state_dict().items())


@pytest.mark.slow
def test_failed_upload_keeps_training_and_the_local_copy(
    fused_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the upload folder should be")
    run = train_poutyne(
        str(fused_dataset),
        **TINY,
        epochs=1,
        steps_per_epoch=1,
        upload_uri=f"file://{blocker}/models",
        out_dir=str(tmp_path / "runs"),
        name="failing",
        wandb=False,
        verbose=False,
    )
    assert run.metrics_path.is_file() and run.metrics.epochs == 1
    assert run.uploaded_to is None and run.saved_model is not None and run.saved_model.is_file()
    assert run.upload_error is not None and str(run.saved_model) in run.upload_error
    err = capsys.readouterr().err
    assert f"upload of model_epoch1.pth to file://{blocker}/models failed" in err
    assert "Training continues" in err


def test_unknown_protocol_upload_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class FakeModel:
        network = torch.nn.Linear(2, 2)

    callback = SaveModel(tmp_path / "saved", epoch=1, upload_uri="nosuchproto://bucket/models")
    callback.set_model(FakeModel())
    callback.on_epoch_end(1, {})
    assert (tmp_path / "saved" / "model_epoch1.pth").is_file()
    assert callback.upload_error is not None and "use a URI fsspec knows" in callback.upload_error
    assert "nosuchproto://bucket/models" in capsys.readouterr().err
    with pytest.raises(ValueError):
        upload_file(tmp_path / "saved" / "model_epoch1.pth", "nosuchproto://bucket/models")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_missing_cloud_backend_names_the_package(tmp_path: Path) -> None:
    class FakeModel:
        network = torch.nn.Linear(2, 2)

    callback = SaveModel(tmp_path / "saved", epoch=1, upload_uri="gs://catdog-bucket/models")
    callback.set_model(FakeModel())
    callback.on_epoch_end(1, {})
    assert callback.upload_error is not None and "pip install gcsfs" in callback.upload_error
    assert (tmp_path / "saved" / "model_epoch1.pth").is_file()


def test_bad_arguments_are_reported(fused_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["poutyne", "--data_dir", str(tmp_path / "missing")]) == 2
    assert f"data_dir {tmp_path / 'missing'}: folder not found" in capsys.readouterr().err
    assert main(["poutyne", "--data_dir", str(fused_dataset), "--save_model_epoch", "0"]) == 2
    assert main(["poutyne", "--no-such-flag", "1"]) == 2


def _lightning(weights: Path, dataset: Path):  # noqa: ANN202 - the Lightning pair, built as LightningCLI would
    import lightning as L

    from catdog.data import CatDogDataModule
    from catdog.model import CatDogClassifier

    L.seed_everything(TINY["seed"], verbose=False)
    module = CatDogClassifier(
        model_name=MODEL,
        pretrained_file=str(weights),
        image_size=TINY["image_size"],
        lr=0.002,
        weight_decay=0.05,
        warmup_epochs=1.0,
        min_lr_ratio=0.01,
        label_smoothing=0.1,
        drop_rate=0.2,
    )
    datamodule = CatDogDataModule(dataset, **TINY)
    return module, datamodule


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_first_batch_loss_matches_lightning(fused_dataset: Path, weights_file: Path) -> None:
    setup = prepare(fused_dataset, pretrained_file=str(weights_file), **TINY)
    images, labels = next(iter(setup.datamodule.train_dataloader()))
    module, datamodule = _lightning(weights_file, fused_dataset)
    datamodule.setup("fit")
    assert datamodule.preprocess_config == setup.datamodule.preprocess_config
    l_images, l_labels = next(iter(datamodule.train_dataloader()))
    assert torch.equal(images, l_images) and torch.equal(labels, l_labels), "the two paths saw different batches"

    # Evaluation loss (plain cross-entropy, BatchNorm running statistics) before any training forward pass.
    module.eval()
    with torch.no_grad():
        lightning_val = module.validation_step((l_images, l_labels), 0).item()
    poutyne_val, _ = setup.model.evaluate_on_batch(images, labels)
    assert poutyne_val == pytest.approx(lightning_val, rel=1e-6)

    # Training loss (label smoothing, dropout, batch statistics) with the same dropout draw.
    module.train()
    torch.manual_seed(0)
    lightning_loss = module.training_step((l_images, l_labels), 0).item()
    torch.manual_seed(0)
    poutyne_loss, _ = setup.model.train_on_batch(images, labels)
    assert poutyne_loss == pytest.approx(lightning_loss, rel=1e-6)
    assert poutyne_loss != pytest.approx(poutyne_val, rel=1e-3), "training and evaluation losses should differ"


@pytest.mark.slow
def test_short_training_matches_lightning(fused_dataset: Path, weights_file: Path, tmp_path: Path) -> None:
    import lightning as L

    steps = 3
    run = train_poutyne(
        str(fused_dataset),
        pretrained_file=str(weights_file),
        **TINY,
        epochs=1,
        steps_per_epoch=steps,
        lr=0.002,
        out_dir=str(tmp_path / "poutyne"),
        name="parity",
        wandb=False,
        verbose=False,
    )
    module, datamodule = _lightning(weights_file, fused_dataset)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path / "lightning",
    )
    trainer.fit(module, datamodule)
    logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
    trainer.test(module, datamodule, verbose=False)

    assert run.history[0]["loss"] == pytest.approx(logged["train_loss_epoch"], rel=1e-4)
    assert run.history[0]["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-4)
    assert run.history[0]["val_acc"] / 100 == pytest.approx(logged["val_acc"], abs=1e-6)
    poutyne_metrics = read_metrics(run.metrics_path)
    lightning_metrics = read_metrics(tmp_path / "lightning" / "metrics.json")
    assert lightning_metrics.framework == "lightning" and poutyne_metrics.framework == "poutyne"
    # Same weights, seed, data and steps: the test accuracies agree to within one image.
    assert abs(poutyne_metrics.accuracy - lightning_metrics.accuracy) <= 1 / _test_size(fused_dataset) + 1e-6
