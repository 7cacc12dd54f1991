"""The ONNX models ``catdog serve`` serves: loading and checking the catdog metadata."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catdog import DISPLAY_NAMES, CatDogError
from catdog.data.transforms import PreprocessConfig
from catdog.export.runtime import create_session
from catdog.utils import MODEL_NAME_RULE, is_valid_model_name

#: The ONNX metadata keys ``catdog export`` writes and the server reads.
METADATA_KEYS = ("classes", "model_name", "checkpoint_sha256", "image_size", "mean", "std")


@dataclass(frozen=True)
class ServedModel:
    """One ONNX model to serve: its endpoint name, file, and what its metadata says."""

    name: str
    path: str
    config: PreprocessConfig
    classes: tuple[str, ...]
    input_name: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The calibration map ``catdog export`` baked into the graph (method, parameters, fitted on which file's
        sha256), or None when the file's probabilities are the network's own."""
        raw = self.metadata.get("calibration", "none")
        try:
            value = json.loads(raw) if raw != "none" else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    @property
    def calibration_method(self) -> str:
        """``temperature``, ``platt`` or ``none``: a label for ``/metrics``."""
        return str((self.calibration or {}).get("method", "none"))

    @property
    def api_path(self) -> str:
        return f"/predict/{self.name}"

    def describe(self) -> dict[str, Any]:
        """What ``/health`` tells about the model."""
        return {
            "path": self.path,
            "endpoint": self.api_path,
            "model_name": self.metadata.get("model_name"),
            "image_size": self.config.image_size,
            "classes": list(self.classes),
            "checkpoint_sha256": self.metadata.get("checkpoint_sha256"),
            "calibrated": self.calibration is not None,
            "calibration": self.calibration,
        }


def check_model_name(name: str, spec: str | None = None) -> None:
    """:class:`CatDogError` unless ``name`` can be an endpoint name (``/predict/<name>``)."""
    if not is_valid_model_name(name):
        shown = spec if spec is not None else f"{name}=..."
        raise CatDogError(
            f"--model {shown}: {name!r} is not a valid model name; it becomes the URL /predict/<name>, so use "
            f"{MODEL_NAME_RULE}; give one as NAME=PATH, e.g. --model pretrained=models/pretrained.onnx (a path "
            "alone must exist and is named after its file)"
        )


def load_model_info(name: str, path: str | os.PathLike[str]) -> ServedModel:
    """Open ``path`` with onnxruntime and read its catdog metadata; :class:`CatDogError` when unusable."""
    check_model_name(name, f"{name}={path}")
    file = Path(path).expanduser()
    if file.is_dir():
        raise CatDogError(
            f"--model {name}={path}: is a directory, not an ONNX file; give the file, e.g. --model {name}="
            f"{Path(path) / (name + '.onnx')}"
        )
    if not file.is_file():
        raise CatDogError(
            f"--model {name}={path}: file not found. Export one with `catdog export --ckpt <checkpoint> --out {path}`."
        )
    try:
        session = create_session(str(file), threads=1)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise CatDogError(
            f"--model {name}={path}: cannot load it as an ONNX model ({type(err).__name__}: {first_line}). "
            "Re-export it with `catdog export`."
        ) from err
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [key for key in METADATA_KEYS if key not in meta]
    if missing:
        raise CatDogError(
            f"--model {name}={path}: the ONNX file lacks the catdog metadata {missing}; export it with "
            "`catdog export` (which records the classes and the preprocessing)."
        )
    try:
        config = PreprocessConfig.from_metadata(meta)
        raw_classes = json.loads(meta["classes"])
        classes = tuple(str(raw_classes[str(i)]) for i in range(len(raw_classes)))
    except (CatDogError, ValueError, KeyError, TypeError) as err:
        raise CatDogError(f"--model {name}={path}: malformed catdog metadata ({err}); re-export it") from err
    if classes != DISPLAY_NAMES:
        raise CatDogError(f"--model {name}={path}: classes {list(classes)} are not {list(DISPLAY_NAMES)}")
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise CatDogError(f"--model {name}={path}: expected one image input (N, 3, H, W), found {inputs}")
    shape = inputs[0].shape
    if list(shape[1:]) != [3, config.image_size, config.image_size]:
        raise CatDogError(
            f"--model {name}={path}: input shape {shape} does not match the metadata's image_size "
            f"{config.image_size}; re-export it"
        )
    return ServedModel(name, str(file), config, classes, inputs[0].name, meta)
