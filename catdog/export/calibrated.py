"""The calibration map of ``catdog calibrate`` inside the exported graph, so served probabilities are calibrated.

The map ``P(dog) = sigmoid(scale * (z1 - z0) + offset)`` is the same as the softmax of the affine logits
``scale * [z0, z1] + [-offset/2, offset/2]``, so the graph keeps its output ``logits`` (softmax still gives the
class probabilities) and gains two nodes after the network: :data:`SCALE_NODE` (``Mul`` by ``scale``) and
:data:`OFFSET_NODE` (``Add`` of the offset pair). :func:`calibrated_network` is the same in torch, the reference
the exported file is verified against. The ONNX metadata key ``calibration`` records the method, parameters
and the sha256 of the validation predictions the map was fitted on (``none`` for an uncalibrated export).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from catdog.calibration import Calibration

if TYPE_CHECKING:
    from torch import nn

#: Names of the two nodes the map adds (the int8 quantization leaves them in float).
SCALE_NODE = "catdog_calibration_scale"
OFFSET_NODE = "catdog_calibration_offset"
NODE_NAMES = (SCALE_NODE, OFFSET_NODE)
#: The metadata key, and its value in an uncalibrated file.
METADATA_KEY = "calibration"
UNCALIBRATED = "none"


def calibration_metadata(calibration: Calibration | None) -> dict[str, str]:
    """The metadata keys that say whether and how the file's outputs are calibrated."""
    if calibration is None:
        return {METADATA_KEY: UNCALIBRATED, "output": "logits; softmax gives the class probabilities"}
    record = {
        "method": calibration.method,
        "parameters": calibration.parameters,
        "scale": calibration.scale,
        "offset": calibration.offset,
        "fitted_on": calibration.fitted_on,
        "fitted_on_sha256": calibration.fitted_on_sha256,
        "n_images": calibration.n_images,
    }
    return {
        METADATA_KEY: json.dumps(record),
        "output": f"calibrated logits ({calibration.map.describe()}); softmax gives calibrated class probabilities",
    }


def calibrated_network(network: nn.Module, calibration: Calibration) -> nn.Module:
    """``network`` followed by the map in torch: logits ``scale * network(x) + [-offset/2, offset/2]`` (float32,
    as the graph computes them); the reference the calibrated file is verified against."""
    import torch

    class CalibratedNetwork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.register_buffer("scale", torch.tensor(calibration.scale, dtype=torch.float32))
            offset = [-calibration.offset / 2.0, calibration.offset / 2.0]
            self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.network(images) * self.scale + self.offset

    return CalibratedNetwork()


def append_to_graph(model: Any, calibration: Calibration, output_name: str) -> None:
    """Make ``model``'s output ``output_name`` the calibrated logits: the network's output is renamed and fed
    through ``Mul(scale)`` then ``Add(offset pair)``, float32 initializers."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    raw = f"{output_name}_uncalibrated"
    for node in graph.node:
        node.output[:] = [raw if name == output_name else name for name in node.output]
        node.input[:] = [raw if name == output_name else name for name in node.input]
    scale = np.asarray(calibration.scale, dtype=np.float32)
    offset = np.asarray([-calibration.offset / 2.0, calibration.offset / 2.0], dtype=np.float32)
    graph.initializer.extend(
        [numpy_helper.from_array(scale, "calibration_scale"), numpy_helper.from_array(offset, "calibration_offset")]
    )
    graph.node.extend(
        [
            helper.make_node("Mul", [raw, "calibration_scale"], [f"{output_name}_scaled"], name=SCALE_NODE),
            helper.make_node("Add", [f"{output_name}_scaled", "calibration_offset"], [output_name], name=OFFSET_NODE),
        ]
    )
