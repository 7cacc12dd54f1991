"""The four Keras baselines of the original work, on the same fused data as the torch models.

Run them with ``python -m keras_baselines train --model NAME --data dataset``. This package imports
neither keras nor torch at import time: the Keras backend (``--backend``, default TensorFlow) is chosen
from the command line and set in ``KERAS_BACKEND`` before keras is first imported. Each run writes the
test split's ``predictions.csv`` and ``metrics.json`` computed from it by :mod:`catdog.metrics`, so the
results table lists them next to the torch runs, scored by the same code.
"""

from __future__ import annotations

__all__ = [
    "BACKENDS",
    "DEFAULT_BN_MOMENTUM",
    "DEFAULT_BN_RECALIBRATION_BATCHES",
    "DEFAULT_BN_RECALIBRATION_STEPS",
    "DEFAULT_OUT",
    "MODEL_NAMES",
    "use_backend",
]

import os
import sys

from catdog import CatDogError

#: ``--model`` values, in the order ``--model all`` trains them.
MODEL_NAMES: tuple[str, ...] = ("effnetv2b2_scratch", "effnetv2b2_imagenet", "custom_cnn", "vgg16")
#: Supported Keras backends; the first is the default.
BACKENDS: tuple[str, ...] = ("tensorflow", "torch")
#: Where a run lands by default: ``runs/keras/<model>``.
DEFAULT_OUT = os.path.join("runs", "keras")
#: BatchNorm momentum in torch convention (the weight of the new batch), set on every BatchNormalization
#: layer; Keras' own ``momentum`` is ``1 - this`` (its default 0.99 is torch's 0.01).
DEFAULT_BN_MOMENTUM = 0.1
#: Before each validation of ``fit``, BatchNorm statistics are re-estimated on this many training batches
#: (0: never) ...
DEFAULT_BN_RECALIBRATION_BATCHES = 32
#: ... while fewer optimizer steps than this have run (the torch trainers' defaults).
DEFAULT_BN_RECALIBRATION_STEPS = 500
#: A layer whose re-estimate would rest on fewer values per channel than this (images x height x width over
#: the batches read) keeps its moving statistics: so few values misdescribe its inference inputs (the torch
#: trainers' minimum, measured in ``catdog.training.batchnorm``).
DEFAULT_BN_MIN_VALUES = 512


def use_backend(name: str) -> None:
    """Select the Keras backend; must run before keras is imported (it reads ``KERAS_BACKEND`` once)."""
    if name not in BACKENDS:
        raise CatDogError(f"--backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    keras = sys.modules.get("keras")
    if keras is not None:
        current = keras.backend.backend()
        if current != name:
            raise CatDogError(
                f"--backend {name}: keras is already imported with the {current!r} backend in this process; "
                f"run in a fresh process or set KERAS_BACKEND={name} before importing keras"
            )
        return
    os.environ["KERAS_BACKEND"] = name
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines; warnings stay
