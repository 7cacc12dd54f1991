"""The one eval preprocessing and robust image opening (shared by training, export and serving)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from catdog import CatDogError
from catdog.data.transforms import (
    CROP_MODES,
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessConfig,
    eval_transform,
    open_image,
    preprocess,
    train_augmentation,
)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _half_red_half_blue(width: int = 40, height: int = 20) -> Image.Image:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(array)


def test_exif_orientation_is_applied() -> None:
    image = _half_red_half_blue()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    opened = open_image(_encode(image, "JPEG", exif=exif, quality=95))
    assert opened.size == (20, 40)
    top, bottom = np.asarray(opened)[2, 10], np.asarray(opened)[-3, 10]
    assert top[0] > 200 and top[2] < 60  # red on top after rotation
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (16, 16), 128),
        lambda: Image.new("RGBA", (16, 16), (0, 0, 0, 0)),
        lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)),
        lambda: Image.new("P", (16, 16), 3),
        lambda: Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)),
    ],
    ids=["grayscale", "rgba", "cmyk", "palette", "16-bit"],
)
def test_any_mode_becomes_8bit_rgb(make) -> None:
    image = make()
    fmt = "JPEG" if image.mode in {"L", "CMYK"} else "PNG"
    opened = open_image(_encode(image, fmt))
    assert opened.mode == "RGB" and opened.size == (16, 16)
    pixel = np.asarray(opened)[8, 8]
    if image.mode == "RGBA":
        assert pixel.tolist() == [255, 255, 255]  # transparent composited on white
    if image.mode == "I;16" or image.mode == "I":
        assert pixel.min() > 250  # full-scale 16-bit stays white, not clipped garbage
    if image.mode == "CMYK":
        assert pixel[0] > 200 and pixel[1] < 60  # cyan-free magenta+yellow = red


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixel = np.asarray(open_image(data))[4, 4]
    assert pixel[0] > 200 and pixel[2] < 60


def test_bad_inputs_raise_errors_naming_the_source(tmp_path) -> None:
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        open_image(b"hello, not an image")
    truncated = _encode(_half_red_half_blue(200, 200), "JPEG")[:300]
    with pytest.raises(ImageDecodeError):
        open_image(truncated)
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageDecodeError, match="nope.jpg"):
        open_image(missing)
    with pytest.raises(ImageTooLargeError, match="above the limit"):
        open_image(_encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)


def test_eval_transform_resizes_crops_and_normalises() -> None:
    config = PreprocessConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=0.8)
    image = _half_red_half_blue(80, 40)
    out = eval_transform(image, config)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert config.scale_size == 40
    # red channel: 1.0 -> (1 - 0.5) / 0.25 = 2 on the left, -2 on the right
    assert out[0, 16, 0] == pytest.approx(2.0, abs=0.05)
    assert out[0, 16, -1] == pytest.approx(-2.0, abs=0.05)
    assert np.array_equal(out, preprocess(_encode(image, "PNG"), config))


def test_config_round_trips_through_metadata() -> None:
    for mode in CROP_MODES:
        config = PreprocessConfig(image_size=48, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), crop_pct=0.9,
                                  interpolation="bilinear", crop_mode=mode)  # fmt: skip
        meta = config.to_metadata()
        assert all(isinstance(v, str) for v in meta.values())
        assert PreprocessConfig.from_metadata(meta) == config
        assert int(meta["scale_size"]) == 53  # floor(48 / 0.9) = floor(53.33)
    with pytest.raises(CatDogError, match="image_size"):
        PreprocessConfig.from_metadata({k: v for k, v in meta.items() if k != "image_size"})
    with pytest.raises(CatDogError, match="crop_mode"):
        PreprocessConfig.from_metadata({**meta, "crop_mode": "zoom"})
    with pytest.raises(CatDogError, match="mean and std need 3 values"):
        PreprocessConfig.from_metadata({**meta, "mean": "[0.5, 0.5]"})


def test_metadata_of_older_exports_still_loads() -> None:
    """Files exported before crop_mode (and crop_pct) were recorded get timm's defaults for them."""
    old = {"image_size": "32", "mean": "[0.5, 0.5, 0.5]", "std": "[0.5, 0.5, 0.5]", "interpolation": "bilinear"}
    config = PreprocessConfig.from_metadata(old)
    assert (config.crop_mode, config.crop_pct, config.interpolation) == ("center", 1.0, "bilinear")


# sizes (width, height): portrait, landscape, square, smaller than the crop, one pixel wide or high,
# and sides whose resize or crop offset falls on a rounding edge
ODD_SIZES = [(1, 1), (1, 97), (97, 1), (3, 200), (31, 45), (45, 31), (40, 40), (41, 40), (100, 37), (255, 256), (13, 9)]


def _timm_eval_transform(config: PreprocessConfig):
    timm_data = pytest.importorskip("timm.data")
    return timm_data.create_transform(
        input_size=(3, config.image_size, config.image_size),
        interpolation=config.interpolation,
        mean=config.mean,
        std=config.std,
        crop_pct=config.crop_pct,
        crop_mode=config.crop_mode,
        is_training=False,
    )


def _random_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_eval_transform_equals_timm_for_the_project_model() -> None:
    """timm's own eval transform from timm's data config of tf_efficientnetv2_b2 (crop_pct 0.89, bicubic)."""
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    from catdog.data.timm_config import preprocess_config_for

    rng = np.random.default_rng(0)
    for size in (32, 37):
        pretrained_cfg = timm.models.get_pretrained_cfg("tf_efficientnetv2_b2").to_dict()
        data_config = resolve_data_config({"input_size": (3, size, size)}, pretrained_cfg=pretrained_cfg)
        reference = create_transform(**data_config, is_training=False)
        config = preprocess_config_for("tf_efficientnetv2_b2", size)
        assert config.scale_size == int(size / data_config["crop_pct"])  # floor, not round: 35 and 41
        for width, height in ODD_SIZES:
            image = _random_image(rng, width, height)
            expected = reference(image).numpy()
            actual = eval_transform(image, config)
            assert actual.shape == expected.shape == (3, size, size)
            assert np.abs(actual - expected).max() <= 1e-6, (size, width, height)


@pytest.mark.parametrize("crop_mode", CROP_MODES)
@pytest.mark.parametrize("crop_pct", [1.0, 0.875, 0.95])
def test_eval_transform_equals_timm_for_every_crop_mode(crop_mode: str, crop_pct: float) -> None:
    rng = np.random.default_rng(1)
    for interpolation, size in [("bilinear", 32), ("bicubic", 33)]:
        config = PreprocessConfig(
            size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), crop_pct, interpolation, crop_mode
        )
        reference = _timm_eval_transform(config)
        for width, height in ODD_SIZES:
            image = _random_image(rng, width, height)
            actual = eval_transform(image, config)
            assert actual.shape == (3, size, size)
            try:
                expected = reference(image).numpy()
            except ValueError:  # timm's border mode resizes a 1xN image to zero pixels; here a side stays >= 1
                assert crop_mode == "border" and min(width, height) * config.scale_size < max(width, height) / 2
                continue
            assert np.abs(actual - expected).max() <= 1e-6, (interpolation, size, width, height)


def test_border_mode_pads_with_the_mean_colour() -> None:
    config = PreprocessConfig(image_size=32, mean=(0.2, 0.4, 0.6), std=(1.0, 1.0, 1.0), crop_mode="border")
    out = eval_transform(Image.new("RGB", (64, 16), (255, 255, 255)), config)  # resized to 32x8, padded to 32x32
    expected_fill = (np.round(np.array(config.mean) * 255) / 255 - np.array(config.mean)).astype(np.float32)
    np.testing.assert_allclose(out[:, 0, 0], expected_fill, atol=1e-6)  # padding: the mean colour, ~0
    np.testing.assert_allclose(out[:, 16, 16], 1 - np.array(config.mean), atol=1e-6)  # the white image


def test_train_augmentation_output_matches_eval_layout() -> None:
    config = PreprocessConfig(image_size=24)
    augment = train_augmentation(config)
    array = np.asarray(_half_red_half_blue(60, 40))
    out = augment(image=array)["image"]
    assert out.shape == (24, 24, 3) and out.dtype == np.float32
    assert out.min() >= -1.01 and out.max() <= 1.01
