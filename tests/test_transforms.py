"""The one eval preprocessing and robust image opening (shared by training, export and serving)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from catdog.transforms import (
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
    config = PreprocessConfig(image_size=48, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), crop_pct=0.9,
                              interpolation="bilinear")  # fmt: skip
    meta = config.to_metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert PreprocessConfig.from_metadata(meta) == config
    with pytest.raises(Exception, match="image_size"):
        PreprocessConfig.from_metadata({k: v for k, v in meta.items() if k != "image_size"})


def test_train_augmentation_output_matches_eval_layout() -> None:
    config = PreprocessConfig(image_size=24)
    augment = train_augmentation(config)
    array = np.asarray(_half_red_half_blue(60, 40))
    out = augment(image=array)["image"]
    assert out.shape == (24, 24, 3) and out.dtype == np.float32
    assert out.min() >= -1.01 and out.max() <= 1.01
