"""The four Keras models of the original comparison, each with its loss, optimiser and callbacks.

All models take float RGB images in ``[0, 255]``, shape ``(size, size, 3)``; their preprocessing is part
of the model (EfficientNetV2's own rescaling, ``Rescaling(1/255)`` for the others), so a saved ``.keras``
file is self-contained.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import keras

from catdog import CLASSES, CatDogError
from keras_baselines import MODEL_NAMES

#: File name Keras gives the ImageNet no-top EfficientNetV2B2 weights in its cache ($KERAS_HOME/models).
EFFNET_NOTOP_FILE = "efficientnetv2-b2_notop.h5"
EFFNET_NOTOP_URL = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/" + EFFNET_NOTOP_FILE


@dataclass(frozen=True)
class ModelSpec:
    """How one baseline is trained."""

    name: str
    label_mode: str  # "categorical" (2-way softmax) or "binary" (one sigmoid)
    learning_rate: float
    pretrained: bool = False
    save_every_epoch: bool = False  # SaveModel callback
    early_stopping: bool = False
    checkpoint_best: bool = False  # ModelCheckpoint, best by val_accuracy


SPECS: dict[str, ModelSpec] = {
    "effnetv2b2_scratch": ModelSpec("effnetv2b2_scratch", "categorical", 1e-3, save_every_epoch=True),
    "effnetv2b2_imagenet": ModelSpec(
        "effnetv2b2_imagenet",
        "categorical",
        1e-4,
        pretrained=True,
        save_every_epoch=True,
        early_stopping=True,
        checkpoint_best=True,
    ),
    "custom_cnn": ModelSpec("custom_cnn", "binary", 1e-3, save_every_epoch=True),
    "vgg16": ModelSpec("vgg16", "categorical", 1e-4, early_stopping=True, checkpoint_best=True),
}
assert tuple(SPECS) == MODEL_NAMES


def get_spec(name: str) -> ModelSpec:
    """The spec of ``--model name``; a clear error for unknown names."""
    try:
        return SPECS[name]
    except KeyError:
        raise CatDogError(f"--model: unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}, all") from None


def _network_reachable(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_imagenet_weights(weights: str | os.PathLike[str] | None, offline: bool = False) -> str:
    """The ImageNet weights for the no-top EfficientNetV2B2: a local file, Keras' cache, or a download.

    ``weights`` (``--weights``) must be a ``.weights.h5`` or ``.h5`` file. Without it, a file already in
    Keras' cache is used; otherwise Keras downloads it, unless ``offline`` is set or the network is
    unreachable, in which case a :class:`CatDogError` explains how to provide the file.
    """
    if weights is not None:
        path = Path(weights)
        if not path.name.endswith((".weights.h5", ".h5")):
            raise CatDogError(f"--weights {path}: expected a Keras .weights.h5 or .h5 file")
        if not path.is_file():
            raise CatDogError(f"--weights {path}: file not found")
        return str(path)
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    cached = Path(keras_home) / "models" / EFFNET_NOTOP_FILE
    if cached.is_file():
        return str(cached)
    how = (
        f"download {EFFNET_NOTOP_URL} on a machine with network access and pass --weights PATH "
        f"(or put it in {cached.parent}), or save a no-top base with "
        "`keras.applications.EfficientNetV2B2(include_top=False).save_weights('effnetv2b2_notop.weights.h5')`"
    )
    if offline:
        raise CatDogError(f"effnetv2b2_imagenet needs ImageNet weights and --offline forbids a download; {how}")
    if not _network_reachable():
        raise CatDogError(f"effnetv2b2_imagenet needs ImageNet weights and the network is unreachable; {how}")
    return "imagenet"


def _efficientnet(image_size: int, weights: str | None) -> keras.Model:
    """The no-top EfficientNetV2B2 base: random (``None``), ``"imagenet"`` (download) or a weights file."""

    def base(weights: str | None) -> keras.Model:
        return keras.applications.EfficientNetV2B2(
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
        )

    if weights is None:
        return base(None)
    if weights == "imagenet":
        try:
            return base("imagenet")
        except Exception as err:  # keras.utils.get_file raises a bare Exception on fetch failures
            raise CatDogError(
                f"could not download the ImageNet weights ({err}); "
                f"download {EFFNET_NOTOP_URL} elsewhere and pass --weights PATH"
            ) from err
    try:
        return base(weights)
    except (ValueError, OSError, KeyError) as err:
        raise CatDogError(
            f"--weights {weights}: does not load into EfficientNetV2B2(include_top=False) ({err}); "
            f"expected the no-top ImageNet file ({EFFNET_NOTOP_FILE}) or a .weights.h5 saved from that base"
        ) from err


def build_model(
    name: str,
    image_size: int = 224,
    weights: str | os.PathLike[str] | None = None,
    offline: bool = False,
    learning_rate: float | None = None,
    run_eagerly: bool = False,
) -> keras.Model:
    """Build and compile ``name`` for square ``image_size`` images.

    ``weights`` and ``offline`` apply to ``effnetv2b2_imagenet`` only (see
    :func:`resolve_imagenet_weights`); passing ``weights`` for another model is an error.
    ``run_eagerly`` skips graph compilation: slower per step, but far quicker for a few smoke steps.
    """
    spec = get_spec(name)
    if weights is not None and not spec.pretrained:
        raise CatDogError(f"--weights applies to effnetv2b2_imagenet only, not {name}")
    if image_size < 32:
        raise CatDogError(f"--image-size must be at least 32, got {image_size}")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    if name == "effnetv2b2_scratch":
        base = _efficientnet(image_size, None)
        x = base(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="probs")(x)
    elif name == "effnetv2b2_imagenet":
        base = _efficientnet(image_size, resolve_imagenet_weights(weights, offline))
        base.trainable = True
        # Fine-tuning: batch-norm layers keep their ImageNet statistics (inference mode).
        x = base(inputs, training=False)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="probs")(x)
    elif name == "custom_cnn":
        x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
        for i, filters in enumerate((32, 64, 128, 128)):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
            x = keras.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(128, activation="relu", name="fc")(x)
        x = keras.layers.Dropout(0.5, name="dropout")(x)
        outputs = keras.layers.Dense(1, activation="sigmoid", name="prob_dog")(x)
    else:  # vgg16
        x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
        base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(image_size, image_size, 3))
        x = base(x)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(256, activation="relu", name="fc")(x)
        x = keras.layers.Dropout(0.5, name="dropout")(x)
        outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name=name)
    loss = "categorical_crossentropy" if spec.label_mode == "categorical" else "binary_crossentropy"
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate or spec.learning_rate),
        loss=loss,
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )
    return model


def dog_probability(probabilities) -> list[float]:
    """P(dog) per image from a model's outputs: column 1 of a softmax, or the single sigmoid."""
    import numpy as np

    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] not in (1, 2):
        raise ValueError(f"expected model outputs of shape (n, 1) or (n, 2), got {probs.shape}")
    return (probs[:, 1] if probs.shape[1] == 2 else probs[:, 0]).tolist()


def label_mode_of(model: keras.Model) -> str:
    """``"binary"`` for a one-unit sigmoid head, ``"categorical"`` for a 2-way softmax."""
    return "binary" if model.output_shape[-1] == 1 else "categorical"
