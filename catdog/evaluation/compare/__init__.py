"""``catdog compare``: a plan (:mod:`~catdog.evaluation.compare.plan`), then the runs and the report
(:mod:`~catdog.evaluation.compare.run`).

May import :mod:`catdog.evaluation.report`, :mod:`catdog.metrics`, :mod:`catdog.data` and
:mod:`catdog.config_files`; the trainers run as ``catdog`` subprocesses, never imported.
"""
