"""Export: ONNX files that describe their own preprocessing (:mod:`~catdog.export.onnx`), verified
against torch with onnxruntime, and their int8 form (:mod:`~catdog.export.quantize`).

May import :mod:`catdog.training` and :mod:`catdog.data`.
"""
