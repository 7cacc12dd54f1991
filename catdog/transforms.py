"""Image loading and preprocessing shared by training, export and serving.

The eval preprocessing is defined once, here, with numpy and Pillow only (no torch), so that the
data module, the ONNX export check and the server turn the same image into the same tensor. Its
parameters travel inside the exported ONNX file as metadata (:meth:`PreprocessConfig.to_metadata`).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
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


class ImageDecodeError(CatDogError):
    """An image that cannot be decoded (not an image, truncated, corrupt)."""


class ImageTooLargeError(CatDogError):
    """An image whose pixel count is above the allowed limit (decompression bomb guard)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Eval preprocessing: resize the short side to ``image_size / crop_pct``, centre crop, normalise."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise CatDogError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise CatDogError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in _RESAMPLE:
            raise CatDogError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")

    @property
    def scale_size(self) -> int:
        """The short side length before the centre crop."""
        return int(round(self.image_size / self.crop_pct))

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX ``metadata_props``."""
        return {
            "image_size": str(self.image_size),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "crop_pct": str(self.crop_pct),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> PreprocessConfig:
        """Inverse of :meth:`to_metadata`; raises :class:`CatDogError` naming a missing key."""
        try:
            return cls(
                image_size=int(meta["image_size"]),
                mean=tuple(float(v) for v in json.loads(meta["mean"])),  # type: ignore[arg-type]
                std=tuple(float(v) for v in json.loads(meta["std"])),  # type: ignore[arg-type]
                crop_pct=float(meta.get("crop_pct", "1.0")),
                interpolation=meta.get("interpolation", "bicubic"),
            )
        except KeyError as err:
            raise CatDogError(f"preprocessing metadata is missing the key {err.args[0]!r}") from err
        except (ValueError, TypeError) as err:
            raise CatDogError(f"preprocessing metadata is malformed: {err}") from err

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return data


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
    """Resize the short side to ``config.scale_size`` and centre-crop to ``config.image_size``."""
    width, height = image.size
    scale = config.scale_size / min(width, height)
    new_size = (max(config.image_size, round(width * scale)), max(config.image_size, round(height * scale)))
    image = image.resize(new_size, _RESAMPLE[config.interpolation])
    left = (new_size[0] - config.image_size) // 2
    top = (new_size[1] - config.image_size) // 2
    return image.crop((left, top, left + config.image_size, top + config.image_size))


def normalize(array: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW normalised with the config's mean and std."""
    mean = np.asarray(config.mean, dtype=np.float32) * 255.0
    std = np.asarray(config.std, dtype=np.float32) * 255.0
    out = (array.astype(np.float32) - mean) / std
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def eval_transform(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """The one eval preprocessing: RGB image -> float32 array of shape (3, size, size)."""
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
