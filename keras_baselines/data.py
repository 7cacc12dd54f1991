"""Input pipelines over the fused ``dataset/{train,test}/{cat,dog}`` folders, built from explicit file lists.

The images are chosen by :mod:`catdog.data.splits`, exactly as the torch trainers choose them: the
validation files are a file list (``--val-files``) or ``split_train(data, val_fraction, seed)``; the
test files are every image of ``test/{cat,dog}`` in sorted order. Class order is ``catdog.CLASSES``
(0 = cat, 1 = dog).

On the TensorFlow backend the pipelines are ``tf.data`` (decoded once, cached as uint8, shuffled each
epoch, augmented, prefetched); on other backends they are ``grain`` pipelines, which need no
TensorFlow. Both decode and resize as ``keras.utils.image_dataset_from_directory`` does (bilinear,
no antialiasing, RGB). The training pipeline drops its incomplete last batch; validation and test keep
every image, in file-list order. Augmentation (flip, rotation, zoom) is Keras preprocessing layers,
applied to the training split only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from catdog import CLASSES, CatDogError
from catdog.data.splits import is_image_name, labelled_images, relative_name, split_train

LABEL_MODES = ("categorical", "binary")
#: Suffixes TensorFlow cannot decode; those images are read with Pillow instead.
_PIL_ONLY = (".tif", ".tiff")


@dataclass
class Splits:
    """The training, validation and test pipelines and their files (relative to the dataset root)."""

    train: Any
    val: Any
    test: Any
    train_files: list[str]
    val_files: list[str]
    test_files: list[str]
    test_labels: list[int]
    val_labels: list[int] = field(default_factory=list)

    @property
    def train_count(self) -> int:
        return len(self.train_files)

    @property
    def val_count(self) -> int:
        return len(self.val_files)


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
            if not any(is_image_name(p.name) for p in folder.iterdir()):
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


def encode_labels(labels: list[int], label_mode: str) -> np.ndarray:
    """Class indices as float32 targets: one-hot ``(n, 2)`` (``categorical``) or ``(n, 1)`` (``binary``)."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    index = np.asarray(labels, dtype=np.int64)
    if label_mode == "categorical":
        return np.eye(len(CLASSES), dtype=np.float32)[index]
    return index.astype(np.float32)[:, None]


def load_splits(
    data: str | Path,
    image_size: int,
    batch_size: int,
    label_mode: str,
    val_fraction: float = 0.15,
    seed: int = 42,
    augment: bool = True,
    val_files: str | Path | None = None,
    val_split: str = "random",
) -> Splits:
    """Training/validation pipelines from ``<data>/train`` and the unshuffled test pipeline.

    ``val_files`` (a file list, :func:`catdog.data.splits.read_file_list`) names the validation images;
    without it they are ``split_train(data, val_fraction, seed, val_split=val_split)``'s. ``label_mode`` is
    ``"categorical"`` (one-hot, for a 2-way softmax) or ``"binary"`` (one sigmoid unit). ``Splits.test_files[i]`` is the
    file of the test pipeline's i-th image.
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    if val_files is None and not 0.0 < val_fraction < 1.0:
        raise CatDogError(f"--val-fraction must be strictly between 0 and 1, got {val_fraction}")
    root = check_dataset(data)
    split = split_train(root, val_fraction=val_fraction, seed=seed, val_files=val_files, val_split=val_split)
    if len(split.train_paths) < batch_size:
        raise CatDogError(
            f"--batch-size {batch_size}: larger than the {len(split.train_paths)} training images of {root}; "
            "incomplete batches are dropped, so pass a smaller --batch-size"
        )
    test_paths, test_labels = labelled_images(root / "test")
    size = (image_size, image_size)
    make = _tf_pipeline if backend_format() == "tf" else _grain_pipeline
    aug = _augment_fn(augmentation(seed)) if augment else None
    return Splits(
        train=make(split.train_paths, encode_labels(split.train_labels, label_mode), size, batch_size, seed, aug),
        val=make(split.val_paths, encode_labels(split.val_labels, label_mode), size, batch_size),
        test=make(test_paths, encode_labels(test_labels, label_mode), size, batch_size, cache=False),
        train_files=[relative_name(p, root) for p in split.train_paths],
        val_files=[relative_name(p, root) for p in split.val_paths],
        test_files=[relative_name(p, root) for p in test_paths],
        test_labels=list(test_labels),
        val_labels=list(split.val_labels),
    )


def load_test(data: str | Path, image_size: int, batch_size: int) -> tuple[Any, list[str], list[int]]:
    """The unshuffled test pipeline of ``<data>/test``, its files (relative to ``data``) and labels."""
    root = check_dataset(data, splits=("test",))
    paths, labels = labelled_images(root / "test")
    make = _tf_pipeline if backend_format() == "tf" else _grain_pipeline
    test = make(paths, encode_labels(labels, "binary"), (image_size, image_size), batch_size, cache=False)
    return test, [relative_name(p, root) for p in paths], list(labels)


def load_image_pil(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """One image as float32 ``(h, w, 3)`` in ``[0, 255]``: Pillow decode to RGB, bilinear resize (Keras ops)."""
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.float32)
    resized = keras.ops.image.resize(array, size, interpolation="bilinear")
    return keras.ops.convert_to_numpy(resized).astype(np.float32)


def _tf_pipeline(paths, targets, size, batch_size, seed=None, augment=None, cache=True):
    """``tf.data`` over ``paths``: decoded once and cached as uint8 (``cache``: the splits read every epoch;
    the test split is read once, and caching it would hold about 1 GB at 224 px for nothing); shuffled and
    batched (drop_last) when ``seed`` is given (the training split), else in order with every image."""
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE

    def decode(path):
        def with_tf():
            raw = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            return tf.image.resize(raw, size, method="bilinear")

        def with_pil():
            return tf.numpy_function(lambda p: load_image_pil(p.decode(), size), [path], tf.float32)

        pil_only = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.(tiff?)$")
        image = tf.cond(pil_only, with_pil, with_tf)
        image.set_shape((*size, 3))
        # Cached as uint8: a quarter of the memory of float32 at the same resolution.
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    def to_float(images, labels):
        return tf.cast(images, tf.float32), labels

    names = [str(p) for p in paths]
    if seed is not None:
        # A seeded permutation before the cache, so a shuffle buffer smaller than the split still mixes
        # both classes (the files are listed cats first); the buffer then reshuffles every epoch.
        order = np.random.default_rng(seed).permutation(len(names))
        names, targets = [names[i] for i in order], targets[order]
    images = tf.data.Dataset.from_tensor_slices(names).map(decode, num_parallel_calls=autotune)
    ds = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(targets)))
    if cache:
        ds = ds.cache()
    if seed is not None:
        ds = ds.shuffle(min(len(names), 4096), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=seed is not None).map(to_float, num_parallel_calls=autotune)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def _grain_pipeline(paths, targets, size, batch_size, seed=None, augment=None, cache=True):  # noqa: ARG001
    """``grain`` over ``paths`` (Pillow decode in grain's read threads, no cache); shuffled and batched
    (drop_last) when ``seed`` is given, else in order with every image."""
    import grain

    ds = grain.MapDataset.source([(str(p), target) for p, target in zip(paths, targets, strict=True)])
    if seed is not None:
        ds = ds.shuffle(seed=seed)
    ds = ds.map(lambda item: (load_image_pil(item[0], size), item[1])).to_iter_dataset()
    ds = ds.batch(batch_size, drop_remainder=seed is not None)
    if augment is not None:
        ds = ds.map(lambda batch: augment(*batch))
    return ds
