"""Input pipelines over the fused ``dataset/{train,test}/{cat,dog}`` folders.

``keras.utils.image_dataset_from_directory`` reads the images with the class order fixed to
``catdog.CLASSES`` (0 = cat, 1 = dog). On the TensorFlow backend it returns ``tf.data`` pipelines
(cached as uint8, shuffled, augmented, prefetched); on other backends it returns ``grain`` pipelines
(``format="grain"``), which need no TensorFlow. Augmentation (flip, rotation, zoom) uses Keras
preprocessing layers and is applied to the training split only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from catdog import CLASSES, CatDogError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
LABEL_MODES = ("categorical", "binary")


@dataclass
class Splits:
    """The training, validation and test pipelines, plus their sizes."""

    train: Any
    val: Any
    test: Any
    train_count: int
    val_count: int
    test_files: list[str]


def check_dataset(data: str | Path, splits: tuple[str, ...] = ("train", "test")) -> Path:
    """Return ``data`` as a Path after checking ``<data>/<split>/{cat,dog}`` hold images."""
    root = Path(data)
    fix = "create it with `catdog sample-data` + `catdog fuse --out DIR`, then pass --data DIR"
    if not root.is_dir():
        raise CatDogError(f"--data {root}: directory not found; {fix}")
    for split in splits:
        for name in CLASSES:
            folder = root / split / name
            if not folder.is_dir():
                raise CatDogError(f"--data {root}: missing folder {folder}; expected {split}/{{cat,dog}}; {fix}")
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
                raise CatDogError(f"--data {root}: no images in {folder}; {fix}")
    return root


def backend_format() -> str:
    """``"tf"`` on the TensorFlow backend, else ``"grain"`` (no TensorFlow needed)."""
    if keras.backend.backend() == "tensorflow":
        return "tf"
    try:
        import grain  # noqa: F401
    except ImportError as err:
        raise CatDogError(
            f"the {keras.backend.backend()} backend reads images with grain, which is not installed; "
            "install it with `pip install grain` (or `pip install catdog[keras]`)"
        ) from err
    return "grain"


def augmentation(seed: int) -> list[keras.layers.Layer]:
    """The training augmentation: horizontal flip, small rotation and zoom (Keras preprocessing layers).

    Edges are filled with ``fill_mode="nearest"``: Keras' default ``"reflect"`` is about 15x slower on
    the torch backend (its ``map_coordinates`` reflects coordinates image by image).
    """
    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.1, fill_mode="nearest", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2),
    ]


def _augment_fn(layers: list[keras.layers.Layer]):
    def augment(images, labels):
        for layer in layers:
            images = layer(images, training=True)
        return images, labels

    return augment


def _from_directory(directory: Path, **kwargs: Any) -> Any:
    return keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred",
        class_names=list(CLASSES),
        color_mode="rgb",
        interpolation="bilinear",
        verbose=False,
        **kwargs,
    )


def load_splits(
    data: str | Path,
    image_size: int,
    batch_size: int,
    label_mode: str,
    val_fraction: float = 0.2,
    seed: int = 42,
    augment: bool = True,
) -> Splits:
    """Training/validation pipelines from ``<data>/train`` (seeded split) and the test pipeline.

    ``label_mode`` is ``"categorical"`` (one-hot, for a 2-way softmax) or ``"binary"`` (one sigmoid unit).
    The test pipeline is unshuffled: ``Splits.test_files[i]`` is the file of its i-th image.
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    if not 0.0 < val_fraction < 1.0:
        raise CatDogError(f"--val-fraction must be strictly between 0 and 1, got {val_fraction}")
    root = check_dataset(data)
    fmt = backend_format()
    size = (image_size, image_size)
    common = dict(label_mode=label_mode, image_size=size, format=fmt)
    if fmt == "tf":
        import tensorflow as tf

        train, val = _from_directory(
            root / "train",
            batch_size=None,
            shuffle=True,
            seed=seed,
            validation_split=val_fraction,
            subset="both",
            **common,
        )
        train_count, val_count = len(train.file_paths), len(val.file_paths)

        def to_uint8(images, labels):
            # Cached as uint8: a quarter of the memory of float32 at the same resolution.
            return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8), labels

        def to_float(images, labels):
            return tf.cast(images, tf.float32), labels

        autotune = tf.data.AUTOTUNE
        train = (
            train.map(to_uint8, num_parallel_calls=autotune)
            .cache()
            .shuffle(min(train_count, 4096), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .map(to_float, num_parallel_calls=autotune)
        )
        if augment:
            train = train.map(_augment_fn(augmentation(seed)), num_parallel_calls=autotune)
        train = train.prefetch(autotune)
        val = (
            val.map(to_uint8, num_parallel_calls=autotune)
            .cache()
            .batch(batch_size)
            .map(to_float, num_parallel_calls=autotune)
            .prefetch(autotune)
        )
        test = _from_directory(root / "test", batch_size=batch_size, shuffle=False, **common)
        test_files = list(test.file_paths)
    else:
        # grain: decoding runs in the read threads of ``to_iter_dataset`` (grain's prefetch); no cache.
        train, val = _from_directory(
            root / "train",
            batch_size=batch_size,
            shuffle=True,
            seed=seed,
            validation_split=val_fraction,
            subset="both",
            **common,
        )
        train_count, val_count = len(train.file_paths), len(val.file_paths)
        if augment:
            augment_fn = _augment_fn(augmentation(seed))
            train = train.map(lambda batch: augment_fn(*batch))
        test = _from_directory(root / "test", batch_size=batch_size, shuffle=False, **common)
        test_files = list(test.file_paths)
    return Splits(train, val, test, train_count, val_count, test_files)


def load_test(data: str | Path, image_size: int, batch_size: int) -> tuple[Any, list[str]]:
    """The unshuffled test pipeline of ``<data>/test`` and its files, in pipeline order."""
    root = check_dataset(data, splits=("test",))
    test = _from_directory(
        root / "test",
        label_mode="int",
        image_size=(image_size, image_size),
        batch_size=batch_size,
        shuffle=False,
        format=backend_format(),
    )
    return test, list(test.file_paths)


def labels_from_files(files: list[str]) -> list[int]:
    """Class index of each file from its folder name (``cat`` -> 0, ``dog`` -> 1)."""
    return [CLASSES.index(Path(f).parent.name) for f in files]
