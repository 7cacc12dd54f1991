"""The Poutyne parity trainer (``catdog poutyne``): the same data, network and optimizer as ``catdog fit``.

Modules: :mod:`~catdog.poutyne.config` (the YAML and its checks), :mod:`~catdog.poutyne.callbacks`
(SaveModel, BatchNorm re-estimation, reseeding) and :mod:`~catdog.poutyne.trainer`. One process only.
May import :mod:`catdog.training`, :mod:`catdog.data` and :mod:`catdog.metrics`; never export,
evaluation, serving or the CLI.
"""
