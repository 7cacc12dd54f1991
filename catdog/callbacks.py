"""Import path kept for configs written before the packages (``class_path: catdog.callbacks.RunRecorder``, as
``catdog configs --out`` copied them and LightningCLI saved them beside each run): the callbacks live in
:mod:`catdog.training.callbacks`."""

from catdog.training.callbacks import EpochSeeds, PredictionWriter, RunRecorder

__all__ = ["EpochSeeds", "PredictionWriter", "RunRecorder"]
