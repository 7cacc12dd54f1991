"""Helpers for the keras_baselines tests: the smoke-run options and a subprocess environment that imports the
checkout."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
#: 32 px, one step an epoch, eagerly: what every keras_baselines test run adds.
SMOKE = ["--image-size", "32", "--batch-size", "4", "--steps-per-epoch", "1", "--eager", "--quiet", "--seed", str(SEED)]


def subprocess_env() -> dict[str, str]:
    """This environment, with the checkout importable and TensorFlow's C++ logging off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env
