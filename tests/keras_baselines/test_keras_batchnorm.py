"""keras_baselines' BatchNorm policy on small models built here: the statistics re-estimated on training batches
(the average of their statistics, layers that saw too few values kept), only before early validations, and each
layer's values per image whatever its axis or nesting. The four saved baselines are checked in
test_keras_baselines.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "tensorflow"
with contextlib.suppress(ImportError):  # Lightning before keras: see test_keras_baselines.py
    import lightning.pytorch  # noqa: F401
keras = pytest.importorskip("keras", reason="keras_baselines needs the keras extra: pip install -e '.[keras]'")

pytestmark = pytest.mark.keras


def _conv_bn_model() -> keras.Model:
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.99, name="bn")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_recalibration_gives_the_average_of_the_batch_statistics() -> None:
    from keras_baselines.callbacks import recalibrate_batchnorm

    keras.utils.set_random_seed(0)
    model = _conv_bn_model()
    rng = np.random.default_rng(0)
    batches = [(rng.normal(2.0, 3.0, (8, 6, 6, 3)).astype("float32"), np.zeros((8, 1))) for _ in range(5)]
    single = (batches[0][0][:1], np.zeros((1, 1)))  # a batch of one is skipped
    assert recalibrate_batchnorm(model, [single, *batches], max_batches=5) == 4
    conv = keras.Model(model.input, model.get_layer("conv").output)
    outputs = [np.asarray(conv(x)) for x, _ in batches[:4]]
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean, np.mean([o.mean(axis=(0, 1, 2)) for o in outputs], axis=0), atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance, np.mean([o.var(axis=(0, 1, 2)) for o in outputs], axis=0), rtol=1e-4)
    assert bn.momentum == 0.99  # restored


def test_recalibration_keeps_the_statistics_of_a_layer_that_saw_too_few_values() -> None:
    """As in the torch trainers: a re-estimate from fewer than 512 values per channel is not used."""
    from keras_baselines.callbacks import recalibrate_batchnorm

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.BatchNormalization(name="wide")(keras.layers.Conv2D(4, 3, name="conv")(inputs))  # 16 per image
    x = keras.layers.Reshape((1, 1, 4))(keras.layers.GlobalAveragePooling2D()(x))
    x = keras.layers.BatchNormalization(name="deep")(x)  # one value per image
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    rng = np.random.default_rng(0)
    batches = [(rng.normal(2.0, 3.0, (8, 6, 6, 3)).astype("float32"), None) for _ in range(4)]  # 32 images
    deep_before = np.asarray(model.get_layer("deep").moving_variance).copy()
    wide_before = np.asarray(model.get_layer("wide").moving_mean).copy()
    assert recalibrate_batchnorm(model, batches) == 4
    np.testing.assert_array_equal(model.get_layer("deep").moving_variance, deep_before)  # 32 values: kept
    assert np.abs(np.asarray(model.get_layer("wide").moving_mean) - wide_before).max() > 0.1  # 512: re-estimated
    assert recalibrate_batchnorm(model, batches, min_values=32) == 4
    assert np.abs(np.asarray(model.get_layer("deep").moving_variance) - deep_before).max() > 0.01


def _channels_last_model() -> keras.Model:
    """BatchNorm on a 4 x 4 conv output (16 values per image), after pooling to 1 x 1 (1), after Dense (1)."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    x = keras.layers.Reshape((1, 1, 4))(keras.layers.GlobalAveragePooling2D()(x))
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.BatchNormalization()(keras.layers.Dense(8)(keras.layers.Flatten()(x)))
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def _channels_first_and_nested_model() -> keras.Model:
    """BatchNorm on axis 1 of (4, 5, 7) (35 values per image), then inside a nested model on axis 2 (28)."""
    inputs = keras.Input((4, 5, 7))
    x = keras.layers.BatchNormalization(axis=1)(inputs)
    inner_input = keras.Input((4, 5, 7))
    inner = keras.Model(inner_input, keras.layers.BatchNormalization(axis=2)(inner_input), name="inner")
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inner(x))))


#: Values per channel one image gives each BatchNorm layer of the models built here (every layer).
BUILT_CASES = {"channels_last": [16, 1, 1], "channels_first_and_nested": [35, 28]}


@pytest.mark.parametrize("case", BUILT_CASES)
def test_batchnorm_layers_tell_their_values_per_image(case: str) -> None:
    """The product of each BatchNorm layer's input's non-channel sizes, whatever its axis or nesting."""
    from keras_baselines.callbacks import _values_per_channel
    from keras_baselines.models import batch_norm_layers

    built = {"channels_last": _channels_last_model, "channels_first_and_nested": _channels_first_and_nested_model}
    assert [_values_per_channel(layer) for layer in batch_norm_layers(built[case]())] == BUILT_CASES[case]


def test_recalibration_runs_before_early_validations_only(tmp_path: Path) -> None:
    from keras_baselines.callbacks import BatchNormRecalibration

    keras.utils.set_random_seed(0)
    model = _conv_bn_model()
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(1)
    images = rng.normal(5.0, 2.0, (32, 6, 6, 3)).astype("float32")  # 512 values per channel at "bn"
    labels = rng.integers(0, 2, (32, 1)).astype("float32")
    gaps: list[float] = []  # |moving mean - the training images' mean| at each validation

    class Probe(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            conv = keras.Model(self.model.input, self.model.get_layer("conv").output)
            train_mean = np.asarray(conv(images)).mean(axis=(0, 1, 2))
            gaps.append(float(np.abs(np.asarray(self.model.get_layer("bn").moving_mean) - train_mean).max()))

    batches = [(images[:16], labels[:16]), (images[16:], labels[16:])]
    callback = BatchNormRecalibration(batches, max_batches=2, max_steps=3)
    model.fit(images, labels, batch_size=16, validation_data=batches[0], epochs=3, callbacks=[callback, Probe()],
              shuffle=False, verbose=0)  # fmt: skip
    # After epoch 1 (2 steps) the statistics are the training images'; epochs 2 and 3 start at 4 and 6
    # steps, past max_steps, and momentum 0.99 has left the moving mean far from them.
    assert callback.recalibrations == 1
    assert gaps[0] < 1e-4 and min(gaps[1:]) > 0.1, gaps
    model.evaluate(*batches[0], verbose=0, callbacks=[callback])  # outside fit: never
    assert callback.recalibrations == 1
