"""``catdog report``: collect runs, then tables, sections and plots, in that one direction.

:mod:`~catdog.evaluation.report.collect` reads records, breeds and mistakes, :mod:`~catdog.evaluation.report.tables`
the runs and their scores (calibrated too) and the results table, :mod:`~catdog.evaluation.report.sections` writes
the Markdown, :mod:`~catdog.evaluation.report.plots` the PNGs; :mod:`~catdog.evaluation.report.command` is the
command and imports them all, none of them imports it.
"""
