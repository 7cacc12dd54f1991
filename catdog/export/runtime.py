"""Running an exported ONNX file on the CPU: the onnxruntime session and the softmax of its logits.

Torch-free (onnxruntime and numpy only): the int8 check of :mod:`catdog.export.quantize` and the
server (:mod:`catdog.serving`) run exported files through these same two functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def create_session(path: str, threads: int = 0) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (0: onnxruntime's choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (numerically stable)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
