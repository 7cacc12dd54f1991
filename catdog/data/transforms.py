"""Image loading and preprocessing shared by training, export and serving.

The eval preprocessing is defined once, here, with numpy and Pillow only (no torch), so that the
data module, the ONNX export check and the server turn the same image into the same tensor. It is
timm's eval transform, bit for bit: ``timm.data.create_transform(**resolve_data_config(...),
is_training=False)`` (torchvision ``Resize`` + ``CenterCrop`` + ``ToTensor`` + ``Normalize`` on a Pillow
image), including its rounding rules. Its parameters and rules travel inside the exported ONNX file as
metadata (:meth:`PreprocessConfig.to_metadata`); ``docs/preprocessing.md`` shows a client reproducing it.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from catdog import CatDogError

ImageSource = str | os.PathLike[str] | bytes | IO[bytes]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

#: timm's eval crop modes: ``center`` (timm's default), ``squash`` and ``border``.
CROP_MODES = ("center", "squash", "border")

#: How each crop mode resizes, written into the ONNX metadata (``resize_rule``) for clients.
_SCALE = "scale_size = floor(image_size / crop_pct); "
_PIL_RESIZE = "Pillow Image.resize(size, interpolation), skipped if the size is unchanged"
RESIZE_RULES = {
    "center": _SCALE + "the shorter side becomes scale_size and the longer side int(scale_size * longer / shorter) "
    "(truncated); " + _PIL_RESIZE,
    "squash": _SCALE + "both sides become scale_size (aspect ratio not kept); " + _PIL_RESIZE,
    "border": _SCALE + "ratio = max(height, width) / scale_size; each side becomes max(1, round(side / ratio)) "
    "(Python round, half to even); " + _PIL_RESIZE,
}
#: The crop rule (``crop_rule`` in the metadata): torchvision's ``center_crop`` / timm's ``center_crop_or_pad``.
CROP_RULE = (
    "if a side is shorter than image_size, pad it with the fill colour, (image_size - side) // 2 before and "
    "(image_size - side + 1) // 2 after; then crop image_size x image_size at top = int(round((height - image_size) "
    "/ 2)), left = int(round((width - image_size) / 2)) (Python round, half to even)"
)
#: The fill colour rule (``fill_rule``): black, except ``border`` mode which pads with the mean colour.
FILL_RULES = {
    "center": "(0, 0, 0)",
    "squash": "(0, 0, 0)",
    "border": "tuple(round(255 * m) for m in mean)",
}
#: The normalisation rule (``normalize_rule``): torchvision ``ToTensor`` then ``Normalize``, in float32.
NORMALIZE_RULE = "x = float32(uint8 RGB) / 255; x = (x - float32(mean)) / float32(std) per channel; layout NCHW"
#: How an upload becomes an RGB image before the transform (``color_rule``).
COLOR_RULE = "decoded with Pillow, EXIF orientation applied, first frame, alpha composited on white, 8-bit RGB"


class ImageDecodeError(CatDogError):
    """An image that cannot be decoded (not an image, truncated, corrupt)."""


class ImageTooLargeError(CatDogError):
    """An image whose pixel count is above the allowed limit (decompression bomb guard)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """timm's eval preprocessing: resize (``crop_mode`` rule, ``scale_size``), centre crop, normalise."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise CatDogError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise CatDogError(f"mean and std need 3 values (RGB), std > 0; got mean {self.mean}, std {self.std}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise CatDogError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in _RESAMPLE:
            raise CatDogError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")
        if self.crop_mode not in CROP_MODES:
            raise CatDogError(f"crop_mode must be one of {list(CROP_MODES)}, got {self.crop_mode!r}")

    @property
    def scale_size(self) -> int:
        """The resize target before the centre crop: ``floor(image_size / crop_pct)``, as timm computes it."""
        return math.floor(self.image_size / self.crop_pct)

    @property
    def fill(self) -> tuple[int, int, int]:
        """The padding colour of the crop (only used when a resized side is shorter than ``image_size``)."""
        if self.crop_mode == "border":
            return tuple(round(255 * m) for m in self.mean)  # type: ignore[return-value]
        return (0, 0, 0)

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX ``metadata_props``: the parameters and every rule to reproduce the transform."""
        return {
            "image_size": str(self.image_size),
            "input_size": json.dumps([3, self.image_size, self.image_size]),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "crop_pct": repr(float(self.crop_pct)),
            "interpolation": self.interpolation,
            "crop_mode": self.crop_mode,
            "scale_size": str(self.scale_size),
            "color_rule": COLOR_RULE,
            "resize_rule": RESIZE_RULES[self.crop_mode],
            "crop_rule": CROP_RULE,
            "fill_rule": FILL_RULES[self.crop_mode],
            "normalize_rule": NORMALIZE_RULE,
            "preprocessing": "timm.data.create_transform(**resolve_data_config(...), is_training=False) for "
            "input_size, interpolation, mean, std, crop_pct, crop_mode; see docs/preprocessing.md",
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> PreprocessConfig:
        """Inverse of :meth:`to_metadata`; files written before ``crop_mode`` was recorded get ``center``.

        Raises :class:`CatDogError` naming a missing key or a malformed value.
        """
        try:
            return cls(
                image_size=int(meta["image_size"]),
                mean=tuple(float(v) for v in json.loads(meta["mean"])),  # type: ignore[arg-type]
                std=tuple(float(v) for v in json.loads(meta["std"])),  # type: ignore[arg-type]
                crop_pct=float(meta.get("crop_pct", "1.0")),
                interpolation=meta.get("interpolation", "bicubic"),
                crop_mode=meta.get("crop_mode", "center"),
            )
        except KeyError as err:
            raise CatDogError(f"preprocessing metadata is missing the key {err.args[0]!r}") from err
        except (ValueError, TypeError) as err:
            raise CatDogError(f"preprocessing metadata is malformed: {err}") from err

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for checkpoints' hyperparameters)."""
        return asdict(self)


def _describe(source: ImageSource) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", "<stream>")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (16-bit grey scaled, alpha composited on white)."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def open_image(source: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Open an image as 8-bit RGB: EXIF orientation applied, first frame of animations.

    Raises :class:`ImageDecodeError` (naming the source) when it is not a decodable image, and
    :class:`ImageTooLargeError` when ``max_pixels`` is given and the image has more pixels.
    """
    name = _describe(source)
    stream: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}"
                )
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLargeError(f"{name}: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(f"{name}: not a recognised image format") from err
    except FileNotFoundError as err:
        raise ImageDecodeError(f"{name}: file not found") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"{name}: cannot decode image ({err})") from err


def resize_and_crop(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """timm's eval resize and centre crop (torchvision ``Resize`` + ``CenterCrop`` rules) of an RGB image."""
    target = resized_size(image.size, config)
    if target != image.size:
        image = image.resize(target, _RESAMPLE[config.interpolation])
    return center_crop_or_pad(image, config.image_size, config.fill)


def resized_size(size: tuple[int, int], config: PreprocessConfig) -> tuple[int, int]:
    """(width, height) after the resize step of ``config.crop_mode`` for an image of ``size`` (width, height)."""
    width, height = size
    scale = config.scale_size
    if config.crop_mode == "squash":
        return scale, scale
    if config.crop_mode == "border":  # timm ResizeKeepRatio(longest=1): the longer side becomes scale_size
        ratio = max(height / scale, width / scale)
        return max(1, round(width / ratio)), max(1, round(height / ratio))
    # torchvision Resize(int): the shorter side becomes scale_size, the longer one is truncated
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(scale * long / short)
    return (scale, new_long) if width <= height else (new_long, scale)


def center_crop_or_pad(image: Image.Image, size: int, fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """torchvision's ``center_crop`` (timm's ``center_crop_or_pad``): pad short sides with ``fill``, crop the centre."""
    width, height = image.size
    if size > width or size > height:
        pad_left = (size - width) // 2 if size > width else 0
        pad_top = (size - height) // 2 if size > height else 0
        pad_right = (size - width + 1) // 2 if size > width else 0
        pad_bottom = (size - height + 1) // 2 if size > height else 0
        image = ImageOps.expand(image, border=(pad_left, pad_top, pad_right, pad_bottom), fill=fill)
        width, height = image.size
        if width == size and height == size:
            return image
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalize(array: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW: ``ToTensor`` (divide by 255) then ``Normalize`` (mean, std), in float32."""
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    scaled = array.astype(np.float32) / np.float32(255.0)
    out = (scaled - mean) / std
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def eval_transform(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """The one eval preprocessing: RGB image -> float32 array of shape (3, size, size), equal to timm's."""
    return normalize(np.asarray(resize_and_crop(image, config)), config)


def preprocess(source: ImageSource, config: PreprocessConfig, max_pixels: int | None = None) -> np.ndarray:
    """Open ``source`` and apply :func:`eval_transform`."""
    return eval_transform(open_image(source, max_pixels=max_pixels), config)


def train_augmentation(config: PreprocessConfig, scale: tuple[float, float] = (0.6, 1.0)) -> Any:
    """Training augmentation (albumentations) ending in the same normalisation as the eval transform.

    The returned callable takes ``image=<uint8 HWC array>`` and returns ``{"image": float32 HWC}``;
    transpose to CHW before batching (as :class:`catdog.data.CatDogDataModule` does).
    """
    import albumentations as A

    size = config.image_size
    return A.Compose(
        [
            A.RandomResizedCrop(size=(size, size), scale=scale, ratio=(0.75, 1.333)),
            A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-15, 15), p=0.3),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5),
            A.Normalize(mean=config.mean, std=config.std, max_pixel_value=255.0),
        ]
    )
