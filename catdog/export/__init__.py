"""Export: ONNX files that describe their own preprocessing (:mod:`~catdog.export.onnx`), verified
against torch with onnxruntime, and their int8 form (:mod:`~catdog.export.quantize`);
:mod:`~catdog.export.runtime` runs an exported file (torch-free, also the server's).

May import :mod:`catdog.training`, :mod:`catdog.data` and :mod:`catdog.metrics`; never poutyne, evaluation,
serving or the CLI.
"""
