"""``catdog export``: checkpoints to one self-contained, self-describing ONNX file that matches torch."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_helpers import save_checkpoint

from catdog import CatDogError, cli
from catdog.data.transforms import PreprocessConfig
from catdog.export.onnx import as_if_trained

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

SMALL_MODEL = "tf_mobilenetv3_small_minimal_100"  # timm, TF 'SAME' padding like the default model, 1M params
IMAGE_SIZE = 40


def _save_checkpoint(path: Path, seed: int) -> None:
    """A real Lightning checkpoint of a :class:`CatDogClassifier` with non-trivial batch-norm statistics."""
    from catdog.training.module import CatDogClassifier

    torch.manual_seed(seed)
    model = CatDogClassifier(model_name=SMALL_MODEL, image_size=IMAGE_SIZE)
    as_if_trained(model.network)
    save_checkpoint(model, path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    paths = {
        "pretrained": root / "pretrained" / "checkpoints" / "best.ckpt",
        "scratch": root / "scratch" / "checkpoints" / "epoch=0-step=1.ckpt",  # '=' as Lightning names them
    }
    for seed, path in enumerate(paths.values()):
        _save_checkpoint(path, seed)
    return paths


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _torch_logits(ckpt: Path, images: np.ndarray) -> np.ndarray:
    from catdog.training.module import load_classifier

    classifier = load_classifier(ckpt)  # the training layers (not exportable): export must still match them
    with torch.inference_mode():
        return classifier(torch.from_numpy(images)).numpy()


def test_export_writes_one_verified_self_describing_file(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from catdog.training.module import load_classifier

    ckpt = checkpoints["pretrained"]
    out = tmp_path / "models" / "pretrained.onnx"
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0

    assert sorted(p.name for p in out.parent.iterdir()) == ["pretrained.onnx"]  # no side .data, no temp file
    model = onnx.load(str(out), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["classes"] == '{"0": "Cat", "1": "Dog"}'
    assert meta["model_name"] == SMALL_MODEL
    assert meta["checkpoint_sha256"] == _sha256(ckpt)
    classifier = load_classifier(ckpt)
    assert PreprocessConfig.from_metadata(meta) == classifier.preprocess_config
    assert meta["image_size"] == str(IMAGE_SIZE)

    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # dynamic batch axis
    assert [d.dim_value for d in dims[1:]] == [3, IMAGE_SIZE, IMAGE_SIZE]  # fixed image size

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 5):
        images = rng.standard_normal((batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        (logits,) = session.run(None, {graph_input.name: images})
        expected = _torch_logits(ckpt, images)
        assert logits.shape == (batch, 2)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    assert np.abs(expected).max() > 1e-3  # the comparison is not between two zero outputs


def test_export_several_checkpoints_in_one_call(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out_dir = tmp_path / "models"
    argv = ["export", "--ckpt", f"best={checkpoints['pretrained']}", "--ckpt", str(checkpoints["scratch"])]
    assert cli.main([*argv, "--out-dir", str(out_dir)]) == 0
    # NAME=PATH names the first; the second is named after its run folder runs/scratch/checkpoints/...
    assert sorted(p.name for p in out_dir.iterdir()) == ["best.onnx", "scratch.onnx"]
    for name, ckpt in [("best", checkpoints["pretrained"]), ("scratch", checkpoints["scratch"])]:
        meta = {p.key: p.value for p in onnx.load(str(out_dir / f"{name}.onnx")).metadata_props}
        assert meta["checkpoint_sha256"] == _sha256(ckpt)


def test_default_architecture_at_224_px_matches_the_training_network(tmp_path: Path) -> None:
    """tf_efficientnetv2_b2 at its real size: the exported file against the training (not exportable) layers."""
    from catdog.export.onnx import export_onnx, read_onnx_metadata
    from catdog.training.network import build_network, preprocess_config_for

    torch.manual_seed(0)
    training = build_network("tf_efficientnetv2_b2").eval()  # dynamic 'SAME' padding, as trained
    as_if_trained(training)
    exportable = build_network("tf_efficientnetv2_b2", exportable=True).eval()
    exportable.load_state_dict(training.state_dict())
    config = preprocess_config_for(exportable, 224)
    result = export_onnx(exportable, config, tmp_path / "b2.onnx", "tf_efficientnetv2_b2", checkpoint_sha256=None)
    assert result.max_abs_diff <= 1e-4
    assert read_onnx_metadata(result.path)["model_name"] == "tf_efficientnetv2_b2"
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(1).standard_normal((2, 3, 224, 224), dtype=np.float32)
    (logits,) = session.run(None, {"image": images})
    with torch.inference_mode():
        expected = training(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    margins = expected[:, 1] - expected[:, 0]
    assert np.abs(expected).max() > 1e-2 and abs(margins[0] - margins[1]) > 1e-3  # non-zero, image-dependent


def _odd_images(folder: Path) -> list[Path]:
    """JPEGs of odd sizes: portrait, landscape, smaller than the crop, one pixel high."""
    rng = np.random.default_rng(7)
    paths = []
    for width, height in [(61, 97), (97, 61), (23, 17), (200, 1), (40, 40)]:
        path = folder / f"odd_{width}x{height}.jpg"
        gradient = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
        noise = rng.integers(0, 60, (height, width, 3))
        Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8)).save(path, quality=95)
        paths.append(path)
    return paths


def test_a_client_using_timm_gets_the_server_probabilities(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """timm's create_transform from the metadata alone, through onnxruntime: the same P(dog) as the server's path."""
    from timm.data import create_transform

    from catdog.data.transforms import preprocess
    from catdog.export.runtime import softmax
    from catdog.serving.models import load_model_info

    out = tmp_path / "model.onnx"
    assert cli.main(["export", "--ckpt", str(checkpoints["pretrained"]), "--out", str(out)]) == 0
    served = load_model_info("model", out)  # what `catdog serve` reads
    meta = served.metadata
    assert (meta["crop_mode"], int(meta["scale_size"])) == ("center", int(IMAGE_SIZE / float(meta["crop_pct"])))
    transform = create_transform(
        input_size=json.loads(meta["input_size"]),
        interpolation=meta["interpolation"],
        mean=tuple(json.loads(meta["mean"])),
        std=tuple(json.loads(meta["std"])),
        crop_pct=float(meta["crop_pct"]),
        crop_mode=meta["crop_mode"],
        is_training=False,
    )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    paths = _odd_images(tmp_path)
    client = np.stack([transform(Image.open(path).convert("RGB")).numpy() for path in paths])
    server = np.stack([preprocess(path.read_bytes(), served.config) for path in paths])
    assert np.abs(client - server).max() <= 1e-6
    (logits_client,) = session.run(None, {served.input_name: client})
    (logits_server,) = session.run(None, {served.input_name: server})
    np.testing.assert_array_equal(logits_client, logits_server)
    np.testing.assert_array_equal(softmax(logits_client), softmax(logits_server))
    assert np.ptp(logits_server[:, 1] - logits_server[:, 0]) > 1e-3  # the images get different answers


def _doc_snippet() -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "preprocessing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/preprocessing.md should hold one python block: the client snippet"
    return blocks[0]


def test_the_documented_client_snippet_reproduces_the_server(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from catdog.data.transforms import preprocess
    from catdog.export.runtime import softmax
    from catdog.serving.models import load_model_info

    out = tmp_path / "model.onnx"
    assert cli.main(["export", "--ckpt", str(checkpoints["scratch"]), "--out", str(out)]) == 0
    served = load_model_info("model", out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    snippet = _doc_snippet()
    assert '"models/pretrained.onnx"' in snippet and '"cat.jpg"' in snippet
    for path in _odd_images(tmp_path):
        code = snippet.replace('"models/pretrained.onnx"', repr(str(out))).replace('"cat.jpg"', repr(str(path)))
        namespace: dict = {}
        exec(compile(code, "docs/preprocessing.md", "exec"), namespace)  # noqa: S102 - the project's own doc
        server = preprocess(path.read_bytes(), served.config)[None]
        assert np.abs(namespace["x"] - server).max() <= 1e-6, path.name
        expected = softmax(session.run(None, {served.input_name: server})[0])[0]
        np.testing.assert_allclose(namespace["probabilities"], expected, rtol=0, atol=1e-12)


class _Noisy(torch.nn.Module):
    """Exports fine, but its output depends on a random draw: onnxruntime cannot match torch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.conv(x).mean(dim=(2, 3))
        return logits + torch.rand_like(logits)


def test_export_fails_loudly_when_onnxruntime_disagrees(tmp_path: Path) -> None:
    from catdog.export.onnx import ExportError, export_onnx

    out = tmp_path / "noisy.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(ExportError, match="max abs difference") as raised:
        export_onnx(_Noisy(), PreprocessConfig(image_size=16), out, "noisy")
    assert str(raised.value).startswith(f"{out}: ")  # the file asked for, not the temporary one
    assert "torch itself gives different answers for the same input" in str(raised.value)
    assert out.read_bytes() == b"previous export"  # the old file survives, nothing half-written beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noisy.onnx"]


class _Shifted(torch.nn.Module):
    """Its exported graph differs from torch: an export fault, not rounding (the bias is added after export)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3)
        self.shift = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3)) + self.shift


def test_an_export_fault_is_told_apart_from_rounding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import catdog.export.onnx
    from catdog.export.onnx import ExportError, export_onnx

    network = _Shifted()
    real_verify = catdog.export.onnx.verify_onnx

    def verify_after_a_change(*args: object, **kwargs: object) -> float:
        network.shift = 0.01  # torch now answers differently from the file written before
        return real_verify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(catdog.export.onnx, "verify_onnx", verify_after_a_change)
    with pytest.raises(ExportError, match="the exported graph computes something else"):
        export_onnx(network, PreprocessConfig(image_size=16), tmp_path / "shifted.onnx", "shifted")


def _ill_conditioned_network() -> torch.nn.Module:
    """tf_efficientnetv2_b2 from scratch whose BatchNorm layers were all re-estimated from 16 generated images
    at 32 px (16 values per channel at its 1x1 last stage), as the former policy did; exportable layers."""
    from catdog.data.sample_data import breed_style, draw_cat, draw_dog
    from catdog.data.transforms import eval_transform
    from catdog.training.batchnorm import recalibrate_batchnorm
    from catdog.training.network import build_network

    rng = np.random.default_rng(0)
    config = PreprocessConfig(image_size=32)
    drawn = [draw_cat(rng, 32) if i % 2 else draw_dog(rng, 32, breed_style(i % 3, 0)) for i in range(16)]
    images = torch.from_numpy(np.stack([eval_transform(image, config) for image in drawn]))
    torch.manual_seed(0)
    network = build_network("tf_efficientnetv2_b2", exportable=True)
    with torch.no_grad():
        torch.nn.init.normal_(network.get_classifier().weight, std=0.01)  # a head that has learnt a little
    recalibrate_batchnorm(network, [images], min_values=0)
    return network.eval()


def test_an_ill_conditioned_network_is_refused_with_the_reason(tmp_path: Path) -> None:
    """Float32 torch itself is far from float64 torch: the message says so, where, and which statistics misfit."""
    from catdog.export.onnx import ExportError, export_onnx

    with pytest.raises(ExportError) as raised:
        export_onnx(_ill_conditioned_network(), PreprocessConfig(image_size=32), tmp_path / "m.onnx", "m")
    message = str(raised.value)
    assert "the file was not written" in message and "numerically ill-conditioned" in message, message
    assert re.search(r"float32 torch itself is \S+ away from float64 torch \(onnxruntime: \S+\)", message), message
    assert re.search(r"its float32 error passes 0.0001 relative at 'blocks\.", message), message
    assert re.search(r"BatchNorm layer '\S+' is the first whose eval inputs lie \S+ running standard", message), message
    assert not (tmp_path / "m.onnx").exists()


def test_the_demo_fit_on_its_smallest_data_exports(tmp_path: Path) -> None:
    """`catdog demo --image-size 32 --epochs 1 --cats 24 --dogs-per-breed 4 --breeds 3`: its fit, then its export.

    One batch of 16 training images, 16 values per channel at the 1x1 last stage: re-estimating every BatchNorm
    layer from them made a model whose float32 answers were rounding noise (logits 230, export refused 11.6 off);
    the layers that saw too few values keep their statistics, and onnxruntime gives float64 torch's answers.
    """
    from train_helpers import fit_options, fused_sample

    from catdog.data.transforms import preprocess
    from catdog.training.module import load_classifier

    data = fused_sample(tmp_path, cats=24, dogs_per_breed=4, breeds=3, size=32, seed=0, cat_train=17, cat_test=7)
    run = tmp_path / "runs" / "scratch"
    assert cli.main(["fit", *fit_options(data, run, image_size=32, max_epochs=1, batch_size=16)]) == 0
    ckpt, out = run / "checkpoints" / "best.ckpt", tmp_path / "models" / "scratch.onnx"
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0

    served = load_classifier(ckpt)
    config = served.preprocess_config
    paths = sorted((data / "test").rglob("*.jpg"))
    images = np.stack([preprocess(path.read_bytes(), config) for path in paths])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": images})
    with torch.inference_mode():
        exact = served.network.double()(torch.from_numpy(images).double()).numpy()
    np.testing.assert_allclose(logits, exact, atol=1e-4, rtol=0)
    assert np.abs(exact).max() < 10  # not the runaway activations of ill-fitting statistics


def test_command_line_mistakes_are_clear_errors(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from catdog.export.onnx import parse_ckpt_spec, plan_exports

    assert cli.main(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "missing.ckpt: file not found" in capsys.readouterr().err
    not_a_ckpt = tmp_path / "notes.ckpt"
    not_a_ckpt.write_text("not a checkpoint")
    assert cli.main(["export", "--ckpt", str(not_a_ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "notes.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()

    two = ["--ckpt", "a=x.ckpt", "--ckpt", "b=y.ckpt"]
    with pytest.raises(CatDogError, match="--out takes one checkpoint"):
        plan_exports(two[1::2], str(tmp_path / "m.onnx"), None)
    with pytest.raises(CatDogError, match="either --out"):
        plan_exports(["x.ckpt"], None, None)
    with pytest.raises(CatDogError, match="both be written"):
        plan_exports(["a=x.ckpt", "a=y.ckpt"], None, str(tmp_path))
    with pytest.raises(CatDogError, match="'my model' is not a valid model name"):
        plan_exports(["runs/my model/checkpoints/best.ckpt"], None, str(tmp_path))
    with pytest.raises(CatDogError, match=r"\.onnx"):
        from catdog.export.onnx import export_onnx

        export_onnx(_Noisy(), PreprocessConfig(image_size=16), tmp_path / "model.bin", "noisy")

    scratch = checkpoints["scratch"]
    assert parse_ckpt_spec(str(scratch)) == (None, scratch)  # an existing file with '=' is a path
    assert parse_ckpt_spec(f"scratch={scratch}") == ("scratch", scratch)
    copied = tmp_path / "runs" / "x" / "checkpoints" / "last.ckpt"
    copied.parent.mkdir(parents=True)
    shutil.copy(scratch, copied)
    assert plan_exports([str(copied)], None, str(tmp_path / "m")) == [(copied, tmp_path / "m" / "x.onnx")]
