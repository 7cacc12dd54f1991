"""Import path kept for users and saved configs: the LightningModule lives in :mod:`catdog.training.module`."""

from catdog.training.module import CatDogClassifier, load_classifier

__all__ = ["CatDogClassifier", "load_classifier"]
