"""``catdog compare``: a plan (:mod:`~catdog.evaluation.compare.plan`), then the runs and the report
(:mod:`~catdog.evaluation.compare.run`)."""
