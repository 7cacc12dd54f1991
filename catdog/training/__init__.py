"""Training: the timm network, BatchNorm policy, optimizer, the LightningModule, callbacks and the CLI.

Modules: :mod:`~catdog.training.network` (timm network, weights files, preprocessing config),
:mod:`~catdog.training.batchnorm`, :mod:`~catdog.training.optim` (loss, AdamW and its schedule),
:mod:`~catdog.training.module` (``CatDogClassifier``), :mod:`~catdog.training.callbacks` and
:mod:`~catdog.training.cli` (``catdog fit|validate|test|predict``, LightningCLI). May import
:mod:`catdog.data` and :mod:`catdog.metrics`.
"""
