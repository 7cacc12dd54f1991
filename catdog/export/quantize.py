"""int8 ONNX models: static quantization with onnxruntime, calibrated on training images, checked on the test split.

:func:`quantize_onnx` turns a file written by ``catdog export`` into ``<name>.int8.onnx`` beside it:

1. calibration: ``calibration_images`` training images (a seeded, class-balanced sample of the dataset's
   ``train/`` split) through the same :func:`catdog.data.transforms.eval_transform` the server uses;
2. ``onnxruntime.quantization.quant_pre_process`` (shape inference, graph optimisation), then
   ``quantize_static`` (QDQ format, uint8 activations and int8 weights, per output channel by default:
   the u8 x s8 products that x86 VNNI instructions compute);
3. evaluation: both models on the whole ``test/`` split; each one's predictions are saved
   (``<name>.int8-eval/{fp32,int8}/predictions.csv``) and the accuracies and the agreement rate are
   computed from those files with :mod:`catdog.metrics`;
4. the int8 file gets the fp32 file's metadata (so ``catdog serve`` serves it like any other model) plus
   the quantization settings and the evaluation figures, and replaces any previous file only once complete.

A calibrated fp32 file keeps its map: the two calibration nodes (:mod:`catdog.export.calibrated`) stay in
float, so the int8 file's probabilities are calibrated by the same map and its metadata says so.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catdog import CatDogError
from catdog.data.splits import labelled_images, relative_name, stratified_split
from catdog.data.transforms import PreprocessConfig, eval_transform, open_image
from catdog.export.calibrated import NODE_NAMES as CALIBRATION_NODES
from catdog.export.runtime import create_session, softmax
from catdog.metrics import THRESHOLD, read_predictions, write_predictions
from catdog.utils import file_sha256

#: ``models/NAME.onnx`` -> ``models/NAME.int8.onnx``.
INT8_SUFFIX = ".int8.onnx"
#: Test accuracy the int8 model may lose (percentage points) before ``catdog export`` warns.
MAX_ACCURACY_LOSS_POINTS = 0.5
_QUANT_FORMATS = ("QDQ", "QOperator")
_QUANT_TYPES = ("QUInt8", "QInt8")
_CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")


@dataclass(frozen=True)
class QuantizeSettings:
    """How the int8 model is made (all of it is recorded in the int8 file's metadata)."""

    calibration_images: int = 128
    seed: int = 0
    per_channel: bool = True
    quant_format: str = "QDQ"
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    calibration_method: str = "MinMax"
    reduce_range: bool = False
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.calibration_images < 1:
            raise CatDogError(f"--calibration-images must be at least 1, got {self.calibration_images}")
        choices = [
            ("quant_format", self.quant_format, _QUANT_FORMATS),
            ("activation_type", self.activation_type, _QUANT_TYPES),
            ("weight_type", self.weight_type, _QUANT_TYPES),
            ("calibration_method", self.calibration_method, _CALIBRATION_METHODS),
        ]
        for name, value, allowed in choices:
            if value not in allowed:
                raise CatDogError(f"quantization {name} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class QuantizeResult:
    """The int8 file and how it compares with its fp32 source on the test split."""

    path: Path
    size_bytes: int
    fp32_accuracy: float
    int8_accuracy: float
    agreement: float
    n_test: int
    max_abs_p_dog_diff: float
    predictions_dir: Path

    @property
    def accuracy_change_points(self) -> float:
        """int8 minus fp32 test accuracy, in percentage points."""
        return 100.0 * (self.int8_accuracy - self.fp32_accuracy)


def summary(source: Path, result: QuantizeResult) -> tuple[str, str | None]:
    """What ``catdog export`` prints: the comparison line, and a warning when int8 loses too much accuracy."""
    line = (
        f"{source} -> {result.path} ({result.size_bytes / 1e6:.1f} MB, int8): test accuracy fp32 "
        f"{result.fp32_accuracy:.4f}, int8 {result.int8_accuracy:.4f} ({result.accuracy_change_points:+.2f} points), "
        f"agreement {result.agreement:.4f} on {result.n_test} images; predictions in {result.predictions_dir}"
    )
    if result.accuracy_change_points >= -MAX_ACCURACY_LOSS_POINTS - 1e-9:  # 1e-9: float noise of k/n differences
        return line, None
    return line, (
        f"warning: {result.path} loses {-result.accuracy_change_points:.2f} points of test accuracy (more than "
        f"{MAX_ACCURACY_LOSS_POINTS}); serve {source} instead, or retry with more --calibration-images"
    )


def int8_path(fp32_path: str | os.PathLike[str]) -> Path:
    """``NAME.onnx`` -> ``NAME.int8.onnx`` in the same folder."""
    path = Path(fp32_path)
    return path.with_name(path.name.removesuffix(".onnx") + INT8_SUFFIX)


def quantize_onnx(
    fp32_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    settings: QuantizeSettings = QuantizeSettings(),
    threads: int = 0,
) -> QuantizeResult:
    """Statically quantize an exported fp32 model to int8 (see the module docstring); returns the comparison."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, data_dir = Path(fp32_path), Path(data_dir)
    out = Path(out_path) if out_path is not None else int8_path(fp32_path)
    meta = _read_metadata(fp32_path)
    config = PreprocessConfig.from_metadata(meta)
    calibration = calibration_files(data_dir, settings.calibration_images, settings.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            _CalibrationReader(calibration, config, meta.get("input_name", "image"), settings.batch_size),
            **_quantize_kwargs(settings),
        )
        result = evaluate(fp32_path, quantized, data_dir, config, out, threads=threads)
        extra = quantization_metadata(settings, result, len(calibration), file_sha256(fp32_path))
        _write_with_metadata(quantized, out, {**meta, **extra})
    return QuantizeResult(**{**asdict(result), "size_bytes": out.stat().st_size})


def evaluate(
    fp32_path: Path, int8_file: Path, data_dir: Path, config: PreprocessConfig, out: Path, threads: int = 0
) -> QuantizeResult:
    """Both models on ``data_dir/test``: predictions saved under ``<out stem>-eval/{fp32,int8}/``, figures from them."""
    files, labels = labelled_images(data_dir / "test")
    names = [relative_name(path, data_dir) for path in files]
    eval_dir = out.with_name(out.name.removesuffix(".onnx") + "-eval")
    saved = {}
    for name, model in (("fp32", fp32_path), ("int8", int8_file)):
        p_dog = predict_files(model, files, config, threads=threads)
        saved[name] = read_predictions(write_predictions(names, labels, p_dog, eval_dir / name))
    fp32, int8 = saved["fp32"], saved["int8"]
    if fp32.files != int8.files or not np.array_equal(fp32.labels, int8.labels):
        raise CatDogError(f"{eval_dir}: the fp32 and int8 predictions do not list the same images")
    return QuantizeResult(
        path=out,
        size_bytes=0,
        fp32_accuracy=fp32.score().accuracy,
        int8_accuracy=int8.score().accuracy,
        agreement=float(np.mean((fp32.p_dog > THRESHOLD) == (int8.p_dog > THRESHOLD))),
        n_test=len(names),
        max_abs_p_dog_diff=float(np.abs(fp32.p_dog - int8.p_dog).max()),
        predictions_dir=eval_dir,
    )


def calibration_files(data_dir: str | os.PathLike[str], count: int, seed: int) -> list[Path]:
    """Up to ``count`` images of ``data_dir/train``, the same share of each class, chosen with ``seed``."""
    files, labels = labelled_images(Path(data_dir) / "train")
    if count >= len(files):
        return files
    _, chosen = stratified_split(labels, val_fraction=count / len(files), seed=seed)
    return [files[i] for i in sorted(chosen)]


def predict_files(
    model_path: str | os.PathLike[str],
    files: Sequence[Path],
    config: PreprocessConfig,
    batch_size: int = 16,
    threads: int = 0,
) -> np.ndarray:
    """P(dog) of each image through the served preprocessing and onnxruntime (softmax of the logits)."""
    session = create_session(os.fspath(model_path), threads)
    input_name = session.get_inputs()[0].name
    out: list[np.ndarray] = []
    for batch in _batches(files, config, batch_size):
        (logits,) = session.run(None, {input_name: batch})
        out.append(softmax(logits)[:, 1])
    return np.concatenate(out) if out else np.zeros(0)


def quantization_metadata(
    settings: QuantizeSettings, result: QuantizeResult, n_calibration: int, fp32_sha256: str
) -> dict[str, str]:
    """The keys the int8 file adds to its fp32 source's metadata."""
    return {
        "precision": "int8",
        "quantization": json.dumps(
            {
                "method": "onnxruntime.quantization.quantize_static",
                **asdict(settings),
                "calibration_images": n_calibration,
                "calibration_split": "train",
                "calibration_preprocessing": "the eval transform in this metadata",
            }
        ),
        "quantized_from_sha256": fp32_sha256,
        "eval_split": "test",
        "eval_images": str(result.n_test),
        "fp32_accuracy": repr(result.fp32_accuracy),
        "int8_accuracy": repr(result.int8_accuracy),
        "int8_fp32_agreement": repr(result.agreement),
        "int8_fp32_max_abs_p_dog_diff": repr(result.max_abs_p_dog_diff),
    }


class _CalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader``: batches of eval-transformed training images."""

    def __init__(self, files: Sequence[Path], config: PreprocessConfig, input_name: str, batch_size: int) -> None:
        self._batches = _batches(files, config, batch_size)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}

    def __iter__(self) -> _CalibrationReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _batches(files: Sequence[Path], config: PreprocessConfig, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(files), batch_size):
        yield np.stack([eval_transform(open_image(path), config) for path in files[start : start + batch_size]])


def _quantize_kwargs(settings: QuantizeSettings) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return dict(
        quant_format=QuantFormat[settings.quant_format],
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        activation_type=QuantType[settings.activation_type],
        weight_type=QuantType[settings.weight_type],
        calibrate_method=CalibrationMethod[settings.calibration_method],
        nodes_to_exclude=list(CALIBRATION_NODES),  # the probability calibration map stays float
    )


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CatDogError(f"{path}: file not found (write it with `catdog export`)")
    meta = dict(create_session(os.fspath(path), threads=1).get_modelmeta().custom_metadata_map)
    if "image_size" not in meta or "classes" not in meta:
        raise CatDogError(f"{path}: not a catdog export (no preprocessing metadata); export it with `catdog export`")
    if meta.get("precision") == "int8":
        raise CatDogError(f"{path}: already an int8 model; quantize the fp32 file it came from")
    return meta


def _write_with_metadata(source: Path, out: Path, meta: dict[str, str]) -> None:
    """Save ``source`` with ``meta`` as its ``metadata_props`` to ``out`` (written beside it, then renamed)."""
    import onnx

    model = onnx.load(os.fspath(source))
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        onnx.save_model(model, os.fspath(tmp), save_as_external_data=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
