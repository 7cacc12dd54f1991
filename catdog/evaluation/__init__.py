"""Evaluation: every number from saved predictions, the results report and the comparison.

:mod:`~catdog.evaluation.metrics` computes every metric from predictions (torch-free);
:mod:`~catdog.evaluation.report` turns runs into tables and plots; :mod:`~catdog.evaluation.compare`
plans and runs every model on one dataset. Trainers are run as subprocesses, so this package imports
no trainer; it may import :mod:`catdog.data`.
"""
