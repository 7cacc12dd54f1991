"""The Poutyne parity trainer's runs: checkpoints, metrics and predictions, every output of the command, early
stopping, uploads, bad arguments."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import fsspec
import numpy as np
import poutyne
import pytest
import torch
import torchmetrics
from poutyne_helpers import MODEL, poutyne_args, same_weights

from catdog.cli import main
from catdog.metrics import read_metrics, read_predictions, run_metrics_from_predictions
from catdog.poutyne.callbacks import SaveModel, upload_file
from catdog.poutyne.trainer import PoutyneRun, train_poutyne
from catdog.training.network import build_network

os.environ.setdefault("WANDB_MODE", "offline")


class Snapshots(poutyne.Callback):
    """The network's weights at the end of every epoch and at the end of training."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: dict[int, dict[str, torch.Tensor]] = {}
        self.final: dict[str, torch.Tensor] = {}

    def _state(self) -> dict[str, torch.Tensor]:
        return {key: value.detach().clone() for key, value in self.model.network.state_dict().items()}

    def on_epoch_end(self, epoch_number: int, logs: dict) -> None:
        self.epochs[epoch_number] = self._state()

    def on_train_end(self, logs: dict) -> None:
        self.final = self._state()


class WreckFrom(poutyne.Callback):
    """Add large noise to every weight after each step from epoch ``epoch`` on: val_loss gets worse."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch, self.active = epoch, False

    def on_epoch_begin(self, epoch_number: int, logs: dict) -> None:
        self.active = epoch_number >= self.epoch

    def on_train_batch_end(self, batch_number: int, logs: dict) -> None:
        if self.active:
            with torch.no_grad():
                for param in self.model.network.parameters():
                    param.add_(torch.randn_like(param))


@pytest.fixture(scope="module")
def wrecked_run(fused_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[PoutyneRun, Snapshots]:
    """Three epochs whose last one is spoiled, so the best epoch (lowest val_loss) is not the last one."""
    snapshots = Snapshots()
    run_dir = tmp_path_factory.mktemp("runs") / "wrecked"
    run = train_poutyne(poutyne_args(fused_dataset, run_dir, "--trainer.max_epochs", "3"), [snapshots, WreckFrom(3)])
    return run, snapshots


def test_last_checkpoint_is_the_final_epoch_and_best_the_lowest_val_loss(wrecked_run) -> None:  # noqa: ANN001
    run, snapshots = wrecked_run
    val_losses = [row["val_loss"] for row in run.history]
    assert [int(row["epoch"]) for row in run.history] == [1, 2, 3]
    best_epoch = 1 + int(np.argmin(val_losses))
    assert best_epoch != 3, f"the spoiled last epoch should not be the best: {val_losses}"
    last = torch.load(run.last_checkpoint, weights_only=True)
    best = torch.load(run.best_checkpoint, weights_only=True)
    assert same_weights(last, snapshots.final) and same_weights(last, snapshots.epochs[3])
    assert same_weights(best, snapshots.epochs[best_epoch])
    assert not same_weights(best, last)
    assert run.metrics.checkpoint == str(run.best_checkpoint.resolve())


def test_metrics_json_is_the_recomputation_from_predictions(wrecked_run) -> None:  # noqa: ANN001
    run, _ = wrecked_run
    saved = json.loads(run.metrics_path.read_text())
    recomputed = run_metrics_from_predictions(
        run.predictions_path, model=MODEL, framework="poutyne", pretrained=False, num_params=saved["num_params"],
        epochs=3, train_seconds=saved["train_seconds"], checkpoint=saved["checkpoint"],
    )  # fmt: skip
    assert saved == json.loads(json.dumps(vars(recomputed)))
    # Independent ground truth from the same rows: torchmetrics and plain counting.
    rows = read_predictions(run.predictions_path)
    labels, p_dog = torch.as_tensor(rows.labels), torch.as_tensor(rows.p_dog)
    assert saved["accuracy"] == pytest.approx(float(((p_dog > 0.5).long() == labels).float().mean()))
    assert saved["auroc"] == pytest.approx(float(torchmetrics.functional.classification.binary_auroc(p_dog, labels)))
    assert sum(map(sum, saved["confusion_matrix"])) == saved["n_test"] == len(rows.files)


def test_each_prediction_belongs_to_its_image(wrecked_run, fused_dataset: Path) -> None:  # noqa: ANN001
    """Every row's P(dog) is the best checkpoint's answer for the image the row names (read afresh)."""
    from catdog.data.transforms import eval_transform, open_image
    from catdog.training.network import preprocess_config_for

    run, _ = wrecked_run
    rows = read_predictions(run.predictions_path)
    expected = sorted(p.relative_to(fused_dataset).as_posix() for p in (fused_dataset / "test").rglob("*.jpg"))
    assert sorted(rows.files) == expected
    assert rows.labels.tolist() == [int(name.split("/")[1] == "dog") for name in rows.files]
    network = build_network(MODEL, pretrained_file=run.best_checkpoint).eval()
    config = preprocess_config_for(network, 32)
    images = torch.stack([torch.from_numpy(eval_transform(open_image(fused_dataset / f), config)) for f in rows.files])
    with torch.no_grad():
        p_dog = network(images).double().softmax(dim=1)[:, 1].numpy()
    assert np.ptp(p_dog) > 1e-3, "the answers do not depend on the image: the check below would prove nothing"
    np.testing.assert_allclose(rows.p_dog, p_dog, rtol=0, atol=1e-5)


def test_cli_writes_every_output(fused_dataset: Path, tmp_path: Path) -> None:
    run_dir, uri = tmp_path / "cli", "memory://catdog-test/models"
    options = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--poutyne.upload_uri", uri]
    argv = [*poutyne_args(fused_dataset, run_dir, *options), "--poutyne.wandb", "true"]
    assert main(["poutyne", *argv]) == 0

    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert {"loss", "acc", "val_loss", "val_acc", "lr_group_0", "lr_group_1"} <= set(rows[0])
    history = json.loads((run_dir / "history.json").read_text())
    assert float(rows[1]["val_loss"]) == pytest.approx(history[1]["val_loss"])
    metrics = read_metrics(run_dir / "metrics.json")
    assert metrics.framework == "poutyne" and metrics.model == MODEL and not metrics.pretrained
    assert metrics.epochs == 2 and metrics.train_seconds > 0
    assert metrics.num_params == sum(p.numel() for p in build_network(MODEL).parameters())
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    val_files = (run_dir / "val_files.txt").read_text().split()
    assert val_files and all(name.startswith("train/") and (fused_dataset / name).is_file() for name in val_files)
    assert sorted(read_predictions(run_dir / "val_predictions.csv").files) == sorted(val_files)  # best weights too
    assert "image_size: 32" in (run_dir / "config.yaml").read_text()

    saved = run_dir / "saved" / "model_epoch1.pth"
    memory = fsspec.filesystem("memory")
    assert memory.cat_file("/catdog-test/models/model_epoch1.pth") == saved.read_bytes()
    memory.rm("/catdog-test", recursive=True)
    assert list((run_dir / "wandb").glob("offline-run-*")), "the W&B logger wrote no offline run"


def test_early_stopping_ends_the_run_and_saves_to_a_file_uri(fused_dataset: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote" / "models"
    options = ["--trainer.max_epochs", "6", "--trainer.limit_train_batches", "2", "--poutyne.patience", "1"]
    options += ["--poutyne.save_model_epoch", "5", "--poutyne.upload_uri", f"file://{remote}"]
    run = train_poutyne(poutyne_args(fused_dataset, tmp_path / "early", *options), [WreckFrom(2)])
    assert run.stopped_early and len(run.history) == 2 and read_metrics(run.metrics_path).epochs == 2
    assert run.saved_model == run.run_dir / "saved" / "model_epoch2.pth"  # stopped before epoch 5: saved at the end
    uploaded = remote / "model_epoch2.pth"
    assert run.uploaded_to is not None and run.uploaded_to.endswith(str(uploaded))
    assert uploaded.read_bytes() == run.saved_model.read_bytes()
    restored = build_network(MODEL, pretrained_file=uploaded)
    assert same_weights(restored.state_dict(), torch.load(run.last_checkpoint, weights_only=True))


def test_failed_upload_keeps_training_and_the_local_copy(
    fused_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the upload folder should be")
    options = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
    run = train_poutyne(poutyne_args(fused_dataset, tmp_path / "failing", *options, "--poutyne.upload_uri",
                                     f"file://{blocker}/models"))  # fmt: skip
    assert run.metrics_path.is_file() and run.metrics.epochs == 1
    assert run.uploaded_to is None and run.saved_model is not None and run.saved_model.is_file()
    assert run.upload_error is not None and str(run.saved_model) in run.upload_error
    err = capsys.readouterr().err
    assert f"upload of model_epoch1.pth to file://{blocker}/models failed" in err and "Training continues" in err


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
    assert main(["poutyne", *poutyne_args(tmp_path / "missing", tmp_path / "run")]) == 2
    assert f"data.data_dir {tmp_path / 'missing'}: folder not found" in capsys.readouterr().err
    assert main(["poutyne", *poutyne_args(fused_dataset, tmp_path / "run", "--poutyne.save_model_epoch", "0")]) == 2
    assert "poutyne.save_model_epoch must be at least 1" in capsys.readouterr().err
    assert main(["poutyne", *poutyne_args(fused_dataset, tmp_path / "run", "--trainer.accelerator", "tpu")]) == 2
    assert "trainer.accelerator 'tpu'" in capsys.readouterr().err
    assert main(["poutyne", "--no-such-flag", "1"]) == 2
    assert not (tmp_path / "run").exists()
