"""Evaluation: the results report and the comparison, from the runs' saved predictions and metrics.

:mod:`~catdog.evaluation.report` turns runs into tables and plots (every number through
:mod:`catdog.metrics`, which sits below every trainer so that each writes the same ``metrics.json``);
:mod:`~catdog.evaluation.compare` plans and runs every model on one dataset. Trainers are run as
subprocesses, so this package imports no trainer: it may import :mod:`catdog.data`, :mod:`catdog.metrics`,
:mod:`catdog.config_files` and :mod:`catdog.utils`; never serving, the CLI or the demo.
"""
