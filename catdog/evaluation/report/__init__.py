"""``catdog report``: collect runs, then tables, sections and plots, in that one direction.

:mod:`~catdog.evaluation.report.collect` reads runs, :mod:`~catdog.evaluation.report.sections` writes
the Markdown, :mod:`~catdog.evaluation.report.plots` the PNGs, :mod:`~catdog.evaluation.report.command`
is the command. May import :mod:`catdog.metrics`, :mod:`catdog.data` and :mod:`catdog.utils`; no torch.
"""
