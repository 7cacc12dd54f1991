"""The four Keras models of the original comparison: a registry of builders, each with its loss and optimiser.

All models take float RGB images in ``[0, 255]``, shape ``(size, size, 3)``; their preprocessing is part
of the model (EfficientNetV2's own rescaling, ``Rescaling(1/255)`` for the others), so a saved ``.keras``
file is self-contained.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from catdog import CLASSES, CatDogError
from keras_baselines import DEFAULT_BN_MOMENTUM, MODEL_NAMES

#: File name Keras gives the ImageNet no-top EfficientNetV2B2 weights in its cache ($KERAS_HOME/models).
EFFNET_NOTOP_FILE = "efficientnetv2-b2_notop.h5"
EFFNET_NOTOP_URL = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/" + EFFNET_NOTOP_FILE


@dataclass(frozen=True)
class ModelSpec:
    """How one baseline is built and trained; ``build(image_size, weights)`` returns the uncompiled network."""

    name: str
    build: Callable[[int, str | None], keras.Model]
    label_mode: str  # "categorical" (2-way softmax) or "binary" (one sigmoid)
    learning_rate: float
    pretrained: bool = False
    save_every_epoch: bool = False  # SaveModel callback, as in the original work
    early_stopping: bool = False


#: The registry, filled by :func:`register_model` in definition order (the order of ``MODEL_NAMES``).
SPECS: dict[str, ModelSpec] = {}


def register_model(label_mode: str, learning_rate: float, **options: bool):
    """Register the decorated builder under its function name (timm's ``@register_model`` habit)."""

    def decorator(build: Callable[[int, str | None], keras.Model]) -> Callable[[int, str | None], keras.Model]:
        SPECS[build.__name__] = ModelSpec(build.__name__, build, label_mode, learning_rate, **options)
        return build

    return decorator


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


# -- the four baselines (registered in the order of MODEL_NAMES) -------------------------------------


def _effnet_head(inputs: keras.KerasTensor, features: keras.KerasTensor, name: str) -> keras.Model:
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


@register_model("categorical", 1e-3, save_every_epoch=True)
def effnetv2b2_scratch(image_size: int, weights: str | None = None) -> keras.Model:
    """EfficientNetV2B2 from random weights (its own rescaling), GAP + 2-way softmax."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    return _effnet_head(inputs, _efficientnet(image_size, None)(inputs), "effnetv2b2_scratch")


@register_model("categorical", 1e-4, pretrained=True, save_every_epoch=True, early_stopping=True)
def effnetv2b2_imagenet(image_size: int, weights: str | None = None) -> keras.Model:
    """EfficientNetV2B2 with ImageNet weights, every layer fine-tuned.

    The original called the base with ``training=False`` to keep the ImageNet BatchNorm statistics, but
    Keras 3 passes the outer call's ``training`` flag down to nested models, so during ``fit`` those layers
    trained anyway (with Keras' slow 0.99 momentum). They now follow the project's one BatchNorm policy,
    like the torch pretrained model: ``--bn-momentum`` and re-estimation before early validations.
    """
    inputs = keras.Input((image_size, image_size, 3), name="image")
    return _effnet_head(inputs, _efficientnet(image_size, weights)(inputs), "effnetv2b2_imagenet")


@register_model("binary", 1e-3, save_every_epoch=True)
def custom_cnn(image_size: int, weights: str | None = None) -> keras.Model:
    """Four Conv2D + MaxPooling blocks, Dense(128) + Dropout, one sigmoid unit (P(dog))."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, filters in enumerate((32, 64, 128, 128)):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc")(x)
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="prob_dog")(x)
    return keras.Model(inputs, outputs, name="custom_cnn")


@register_model("categorical", 1e-4, early_stopping=True)
def vgg16(image_size: int, weights: str | None = None) -> keras.Model:
    """VGG16 from random weights, GAP + Dense(256) + Dropout + 2-way softmax."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = keras.applications.VGG16(include_top=False, weights=None, input_shape=(image_size, image_size, 3))(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(256, activation="relu", name="fc")(x)
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="vgg16")


assert tuple(SPECS) == MODEL_NAMES, (tuple(SPECS), MODEL_NAMES)


# -- building, BatchNorm, outputs -------------------------------------------------------------------


def build_model(
    name: str,
    image_size: int = 224,
    weights: str | os.PathLike[str] | None = None,
    offline: bool = False,
    learning_rate: float | None = None,
    run_eagerly: bool = False,
    bn_momentum: float = DEFAULT_BN_MOMENTUM,
) -> keras.Model:
    """Build and compile ``name`` for square ``image_size`` images.

    ``weights`` and ``offline`` apply to ``effnetv2b2_imagenet`` only (see
    :func:`resolve_imagenet_weights`); passing ``weights`` for another model is an error.
    ``bn_momentum`` (torch convention) is set on every BatchNormalization layer (:func:`set_bn_momentum`).
    ``run_eagerly`` skips graph compilation: slower per step, but far quicker for a few smoke steps.
    """
    spec = get_spec(name)
    if weights is not None and not spec.pretrained:
        raise CatDogError(f"--weights applies to effnetv2b2_imagenet only, not {name}")
    if image_size < 32:
        raise CatDogError(f"--image-size must be at least 32, got {image_size}")
    model = spec.build(image_size, resolve_imagenet_weights(weights, offline) if spec.pretrained else None)
    set_bn_momentum(model, bn_momentum)
    loss = "categorical_crossentropy" if spec.label_mode == "categorical" else "binary_crossentropy"
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate or spec.learning_rate),
        loss=loss,
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )
    return model


def batch_norm_layers(model: keras.Layer) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of ``model``, including those inside nested models."""
    found: list[keras.layers.BatchNormalization] = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        else:
            found += batch_norm_layers(layer)
    return found


def set_bn_momentum(model: keras.Layer, bn_momentum: float) -> int:
    """Set ``bn_momentum`` (torch convention: the weight of the new batch) on every BatchNormalization
    layer; Keras' own ``momentum`` is the weight of the old value, ``1 - bn_momentum``. Returns the count.

    Keras' default (0.99, torch 0.01) leaves the running statistics near their initial values after a
    short run, and a model evaluated with them calls (almost) every image one class. The torch default
    0.1 follows them within a few dozen steps.
    """
    if not 0.0 < bn_momentum <= 1.0:
        raise CatDogError(f"--bn-momentum must be in (0, 1] (torch convention, default 0.1), got {bn_momentum}")
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.momentum = 1.0 - bn_momentum
    return len(layers)


def dog_probability(probabilities) -> list[float]:
    """P(dog) per image from a model's outputs: column 1 of a softmax, or the single sigmoid."""
    import numpy as np

    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] not in (1, 2):
        raise ValueError(f"expected model outputs of shape (n, 1) or (n, 2), got {probs.shape}")
    return (probs[:, 1] if probs.shape[1] == 2 else probs[:, 0]).tolist()
