"""Helpers for the keras_baselines tests: the seed and smoke-run options, one image decoded apart from the
pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 0
SMOKE = ["--image-size", "32", "--batch-size", "4", "--steps-per-epoch", "1", "--eager", "--quiet", "--seed", str(SEED)]


def decode(path: Path, size: int) -> np.ndarray:
    """One image decoded and resized apart from the pipelines (TensorFlow ops, batch of one)."""
    import tensorflow as tf

    image = tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3)
    return tf.image.resize(image, (size, size), method="bilinear").numpy()
