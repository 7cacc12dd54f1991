"""The timm network builder (local weights, kept heads, clear errors), preprocessing config and checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from catdog import CatDogError
from catdog.training.batchnorm import batchnorm_layers
from catdog.training.module import CatDogClassifier, load_classifier
from catdog.training.network import build_network, count_parameters, preprocess_config_for

MODEL = "tf_efficientnetv2_b2"


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1000-class ImageNet-shaped state dict from a random timm model, as ``torch.save`` writes it."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / f"{MODEL}.pth"
    torch.save(timm.create_model(MODEL, pretrained=False).state_dict(), path)
    return path


def test_scratch_network_has_two_outputs() -> None:
    network = build_network(MODEL)
    assert network.get_classifier().out_features == 2
    assert network(torch.zeros(2, 3, 32, 32)).shape == (2, 2)
    assert count_parameters(network) == sum(p.numel() for p in network.parameters())


def test_imagenet_file_loads_backbone_and_replaces_classifier(imagenet_weights: Path) -> None:
    source = torch.load(imagenet_weights, weights_only=True)
    assert source["classifier.weight"].shape[0] == 1000
    network = build_network(MODEL, pretrained_file=imagenet_weights)
    state = network.state_dict()
    torch.testing.assert_close(state["conv_stem.weight"], source["conv_stem.weight"])
    torch.testing.assert_close(state["blocks.3.0.conv_pwl.weight"], source["blocks.3.0.conv_pwl.weight"])
    assert state["classifier.weight"].shape == (2, 1408)
    assert not state["classifier.weight"].any()  # a fresh head starts at zero
    # a scratch build does not get those weights
    assert not torch.equal(build_network(MODEL).state_dict()["conv_stem.weight"], source["conv_stem.weight"])


def test_fine_tuned_two_class_head_survives_loading(tmp_path: Path) -> None:
    torch.manual_seed(7)
    tuned = build_network(MODEL)
    with torch.no_grad():
        tuned.get_classifier().weight.add_(1.0)  # unlike any fresh initialisation
    path = tmp_path / "tuned.pth"
    torch.save(tuned.state_dict(), path)
    loaded = build_network(MODEL, pretrained_file=path)
    torch.testing.assert_close(loaded.get_classifier().weight, tuned.get_classifier().weight)
    torch.testing.assert_close(loaded.get_classifier().bias, tuned.get_classifier().bias)


def test_lightning_checkpoint_works_as_weights_file(tmp_path: Path) -> None:
    model = CatDogClassifier(MODEL, image_size=32)
    with torch.no_grad():
        model.network.get_classifier().weight.normal_()
    checkpoint = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    loaded = build_network(MODEL, pretrained_file=checkpoint)
    torch.testing.assert_close(loaded.get_classifier().weight, model.network.get_classifier().weight)


def test_missing_pretrained_weights_say_how_to_provide_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CatDogError, match="pretrained_file") as info:
        build_network(MODEL, pretrained=True)
    assert "scratch" in str(info.value)
    with pytest.raises(CatDogError, match="missing.pth: file not found"):
        build_network(MODEL, pretrained_file=tmp_path / "missing.pth")


def test_pretrained_uses_weights_in_the_hub_cache(
    imagenet_weights: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``pretrained=True`` without a file reads timm's weights from the local Hugging Face cache."""
    cache = tmp_path / "hf"
    repo = cache / "models--timm--tf_efficientnetv2_b2.in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "pytorch_model.bin").write_bytes(imagenet_weights.read_bytes())
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    network = build_network(MODEL, pretrained=True)
    source = torch.load(imagenet_weights, weights_only=True)
    torch.testing.assert_close(network.state_dict()["conv_stem.weight"], source["conv_stem.weight"])
    assert network.get_classifier().out_features == 2


def test_unreadable_or_mismatched_weights_are_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CatDogError, match="garbage.pth: cannot read"):
        build_network(MODEL, pretrained_file=garbage)
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    with pytest.raises(CatDogError, match="do not fit"):
        build_network(MODEL, pretrained_file=other)
    with pytest.raises(CatDogError, match="not a timm model"):
        build_network("no_such_model")


def test_preprocess_config_comes_from_timm() -> None:
    config = preprocess_config_for(MODEL, 48)
    data_config = timm.data.resolve_data_config({}, model=timm.create_model(MODEL))
    assert config.image_size == 48
    assert config.mean == pytest.approx(data_config["mean"]) and config.std == pytest.approx(data_config["std"])
    assert config.crop_pct == pytest.approx(data_config["crop_pct"])
    assert config.interpolation == data_config["interpolation"]
    assert preprocess_config_for(build_network(MODEL), 48) == config


def _give_trained_values(network: torch.nn.Module) -> None:
    """A non-zero head and BatchNorm running statistics unlike their initial 0 / 1, as after training."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        head = network.get_classifier()
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.05)
        head.bias.copy_(torch.tensor([0.3, -0.2]))
        for layer in batchnorm_layers(network):
            layer.running_mean.copy_(torch.rand(layer.running_mean.shape, generator=generator) - 0.5)
            layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=generator) + 0.5)


def test_classifier_round_trips_through_a_checkpoint(imagenet_weights: Path, tmp_path: Path) -> None:
    import lightning.pytorch as pl

    model = CatDogClassifier(MODEL, pretrained_file=str(imagenet_weights), image_size=32)
    _give_trained_values(model.network)  # a fresh head is zero: every output would be 0 whatever was loaded
    assert model.hparams.model_name == MODEL and model.hparams.image_size == 32
    assert model.preprocess_config.image_size == 32
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(model)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    imagenet_weights.rename(imagenet_weights.with_suffix(".moved"))  # not needed to load the checkpoint
    try:
        loaded = load_classifier(path)
        exportable = load_classifier(path, exportable=True)
    finally:
        imagenet_weights.with_suffix(".moved").rename(imagenet_weights)
    assert not loaded.training and loaded.device.type == "cpu"
    assert loaded.pretrained and loaded.preprocess_config == model.preprocess_config
    model.eval()
    for layer_loaded, layer in zip(batchnorm_layers(loaded.network), batchnorm_layers(model.network), strict=True):
        torch.testing.assert_close(layer_loaded.running_var, layer.running_var, rtol=0, atol=0)
    for size in (32, 224):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = model(x)
            assert expected.abs().min() > 1e-3 and not torch.allclose(expected[0], expected[1])
            torch.testing.assert_close(loaded(x), expected)
            torch.testing.assert_close(exportable(x), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(CatDogError, match="file not found"):
        load_classifier(tmp_path / "none.ckpt")
