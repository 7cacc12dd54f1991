"""``catdog export``: checkpoints to self-describing, verified ONNX files for ``catdog serve``.

Usage::

    catdog export --ckpt runs/pretrained/checkpoints/best.ckpt --out models/pretrained.onnx
    catdog export --ckpt pretrained=runs/pretrained/checkpoints/best.ckpt \\
                  --ckpt scratch=runs/scratch/checkpoints/best.ckpt --out-dir models/
    catdog export --ckpt runs/pretrained/checkpoints/best.ckpt --out models/pretrained.onnx \\
                  --quantize int8 --data-dir dataset

The core is :func:`export_onnx`, which works on any ``nn.Module``: ``torch.onnx.export`` (the
``torch.export``-based exporter) of the network in eval mode, rebuilt with timm's ``exportable=True``
(timm's ``tf_`` models pad 'SAME' for a fixed size, so only the batch axis is dynamic and the image
size is the one in the metadata). The file is one self-contained ``.onnx`` (weights inside, no side
``.data`` file) whose ``metadata_props`` carry the class names, the preprocessing
(:meth:`catdog.data.transforms.PreprocessConfig.to_metadata`), the model name and the checkpoint's sha256.
Every export is verified before it replaces the output file: ``onnx.checker`` and onnxruntime against
torch on a random batch (max abs difference ``<= atol``, 1e-4 by default); otherwise :class:`ExportError`,
whose message says why (:mod:`catdog.export.verify`).
The run's ``calibration.json`` (``catdog calibrate``, fitted on validation predictions) is baked into the graph
so the served probabilities are calibrated (:mod:`catdog.export.calibrated`; ``--uncalibrated`` leaves it out);
the metadata key ``calibration`` says which map, fitted on which file (its sha256).
``--quantize int8`` also writes ``NAME.int8.onnx`` beside each file (:mod:`catdog.export.quantize`), with the
same map.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catdog import DISPLAY_NAMES, CatDogError, __version__
from catdog.calibration import CALIBRATION_FILENAME, Calibration, read_calibration
from catdog.data.transforms import PreprocessConfig
from catdog.export.calibrated import append_to_graph, calibrated_network, calibration_metadata
from catdog.export.verify import INPUT_NAME, OUTPUT_NAME, ExportError, verify_onnx
from catdog.utils import MODEL_NAME_RULE, file_sha256, is_valid_model_name

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ExportResult:
    """A verified ONNX file and how close onnxruntime came to torch."""

    path: Path
    max_abs_diff: float
    size_bytes: int


def onnx_metadata(
    preprocess_config: PreprocessConfig,
    model_name: str,
    checkpoint_sha256: str | None = None,
    calibration: Calibration | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` written into every exported file (read back by ``catdog serve``)."""
    import torch

    return {
        "classes": json.dumps({str(i): name for i, name in enumerate(DISPLAY_NAMES)}),
        "model_name": model_name,
        "checkpoint_sha256": checkpoint_sha256 or "",
        **preprocess_config.to_metadata(),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        **calibration_metadata(calibration),
        "catdog_version": __version__,
        "torch_version": torch.__version__,
    }


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def export_onnx(
    network: nn.Module,
    preprocess_config: PreprocessConfig,
    out_path: str | os.PathLike[str],
    model_name: str,
    checkpoint_sha256: str | None = None,
    *,
    calibration: Calibration | None = None,
    opset: int | None = None,
    atol: float = 1e-4,
) -> ExportResult:
    """Export ``network`` (logits for (N, 3, S, S) images, S = ``preprocess_config.image_size``) to ``out_path``.

    Dynamic batch axis, weights inside the one file, catdog metadata, then :func:`verify_onnx`. With a
    ``calibration`` (``catdog calibrate``'s), the graph's logits are the calibrated ones
    (:mod:`catdog.export.calibrated`) and the file is verified against the calibrated torch network. The file
    is written next to ``out_path`` and renamed over it only once verified, so a failed export leaves
    any previous file untouched and no partial one.
    """
    import onnx

    out = Path(out_path)
    if out.suffix != ".onnx":
        raise CatDogError(f"--out {out}: the output file name must end in .onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.onnx")
    size = preprocess_config.image_size
    network = network.eval()
    proto = _torch_export(network, size, opset, f"{out}: torch.onnx.export failed for {model_name}")
    if calibration is not None:
        append_to_graph(proto, calibration, OUTPUT_NAME)
        network = calibrated_network(network, calibration).eval()
    del proto.metadata_props[:]
    for key, value in onnx_metadata(preprocess_config, model_name, checkpoint_sha256, calibration).items():
        proto.metadata_props.add(key=key, value=value)
    what = "calibrated logits" if calibration is not None else "logits"
    proto.doc_string = f"catdog {model_name}: cat (0) vs dog (1) {what} for {size}x{size} normalised images"
    try:
        onnx.save_model(proto, tmp, save_as_external_data=False)
        diff = verify_onnx(tmp, network, size, atol=atol, label=out)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, diff, out.stat().st_size)


def _torch_export(network: nn.Module, size: int, opset: int | None, failure: str) -> Any:
    """``torch.onnx.export`` (dynamo) of ``network`` with a dynamic batch axis: the ``ModelProto``."""
    import torch

    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.onnx.export(
            network,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    except Exception as err:  # the exporter raises many different types
        raise ExportError(f"{failure}: {type(err).__name__}: {err}") from err
    return program.model_proto


def as_if_trained(network: nn.Module, head_std: float = 0.5) -> nn.Module:
    """Give an untrained network a trained one's kind of weights, in place, to check an export or int8 file.

    Batch-norm running statistics away from (0, 1) (means from N(0, 0.1), variances from U(0.5, 2)) and a
    non-zero classifier head (weights from N(0, ``head_std``); a fresh head is zero, every answer 50/50), so
    that differences between torch, onnxruntime and int8 show. Draws from torch's global generator.
    """
    import torch

    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        for param in network.get_classifier().parameters():
            param.normal_(0, head_std)
    return network


def export_checkpoint(
    ckpt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    calibration: Calibration | None = None,
    opset: int | None = None,
    atol: float = 1e-4,
) -> ExportResult:
    """Load a :class:`~catdog.training.module.CatDogClassifier` checkpoint (exportable layers) and export it,
    with ``calibration`` baked into the graph when given (:func:`find_calibration`)."""
    from catdog.training.module import load_classifier

    try:
        classifier = load_classifier(ckpt_path, exportable=True)
    except CatDogError:
        raise
    except Exception as err:  # torch.load on a file that is not a checkpoint: UnpicklingError, ValueError, ...
        raise CatDogError(
            f"--ckpt {ckpt_path}: not a readable catdog checkpoint ({type(err).__name__}: {err})"
        ) from err
    return export_onnx(
        classifier.network,
        classifier.preprocess_config,
        out_path,
        model_name=str(classifier.hparams.model_name),
        checkpoint_sha256=file_sha256(ckpt_path),
        calibration=calibration,
        opset=opset,
        atol=atol,
    )


def find_calibration(ckpt: Path, explicit: Path | None = None) -> Calibration | None:
    """The ``calibration.json`` of the run that tested ``ckpt`` (``runs/<name>/``, beside ``checkpoints/``), or
    ``explicit``; None (with a note) when the run has none. Refuses a map fitted on another checkpoint's
    validation predictions, or on a ``val_predictions.csv`` that has changed since."""
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    path = explicit or run / CALIBRATION_FILENAME
    if explicit is None and not path.is_file():
        print(f"note: {ckpt}: no {path}, exporting uncalibrated probabilities (fit one: `catdog calibrate {run}`)")
        return None
    calibration = read_calibration(path)
    fix = f"rerun `catdog calibrate {path.parent}` after testing {ckpt}, or export with --uncalibrated"
    if calibration.checkpoint_sha256 and calibration.checkpoint_sha256 != file_sha256(ckpt):
        raise CatDogError(
            f"--ckpt {ckpt}: {path} was fitted on the validation predictions of another checkpoint "
            f"({calibration.checkpoint}); {fix}"
        )
    source = path.parent / calibration.fitted_on
    if source.is_file() and file_sha256(source) != calibration.fitted_on_sha256:
        raise CatDogError(f"--ckpt {ckpt}: {source} has changed since {path} was fitted on it; {fix}")
    return calibration


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def _default_name(ckpt: Path) -> str:
    """``runs/<name>/checkpoints/x.ckpt`` -> ``<name>``; otherwise the file's stem."""
    if ckpt.parent.name == "checkpoints" and ckpt.parent.parent.name:
        return ckpt.parent.parent.name
    return ckpt.stem


def parse_ckpt_spec(spec: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` or ``PATH`` (Lightning file names contain '=', so an existing file wins)."""
    name, sep, rest = spec.partition("=")
    if sep and not Path(spec).exists() and is_valid_model_name(name) and rest:
        return name, Path(rest)
    return None, Path(spec)


def plan_exports(ckpts: Sequence[str], out: str | None, out_dir: str | None) -> list[tuple[Path, Path]]:
    """``[(checkpoint, onnx file)]`` from the command line's ``--ckpt``/``--out``/``--out-dir``."""
    if not ckpts:
        raise CatDogError("give at least one --ckpt PATH (or --ckpt NAME=PATH)")
    if (out is None) == (out_dir is None):
        raise CatDogError("give either --out FILE.onnx (one checkpoint) or --out-dir DIR (files named DIR/NAME.onnx)")
    specs = [parse_ckpt_spec(spec) for spec in ckpts]
    if out is not None:
        if len(specs) != 1:
            raise CatDogError(f"--out takes one checkpoint, {len(specs)} given; use --out-dir DIR with NAME=PATH")
        return [(specs[0][1], Path(out))]
    plan: list[tuple[Path, Path]] = []
    for name, ckpt in specs:
        name = name or _default_name(ckpt)
        if not is_valid_model_name(name):
            raise CatDogError(
                f"--ckpt {ckpt}: {name!r} is not a valid model name ({MODEL_NAME_RULE}); give one with --ckpt NAME=PATH"
            )
        target = Path(out_dir) / f"{name}.onnx"  # type: ignore[arg-type]
        if target in {t for _, t in plan}:
            raise CatDogError(f"two checkpoints would both be written to {target}; name them with --ckpt NAME=PATH")
        plan.append((ckpt, target))
    return plan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catdog export",
        description="Export catdog checkpoints to verified, self-describing ONNX files (dynamic batch axis).",
    )
    parser.add_argument(
        "--ckpt",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="a Lightning checkpoint; repeat with NAME=PATH and --out-dir to export several",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--out", help="output file (one checkpoint), e.g. models/pretrained.onnx")
    target.add_argument(
        "--out-dir", help="output folder: writes DIR/NAME.onnx (NAME from NAME=PATH or runs/NAME/checkpoints)"
    )
    calibration = parser.add_mutually_exclusive_group()
    calibration.add_argument(
        "--uncalibrated",
        action="store_true",
        help="export the network's own probabilities, without the run's calibration.json (`catdog calibrate`)",
    )
    calibration.add_argument(
        "--calibration-file",
        type=Path,
        default=None,
        help="the calibration.json to bake in (default: the tested run's, runs/NAME/calibration.json, if any)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest |onnxruntime - torch| allowed (1e-4)")
    quant = parser.add_argument_group("int8 models (onnxruntime static quantization)")
    quant.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="also write NAME.int8.onnx beside each file, calibrated on --data-dir's train split and evaluated "
        "against the fp32 file on its test split (needs --data-dir)",
    )
    quant.add_argument("--data-dir", default=None, help="the dataset of `catdog fuse` (train/ and test/ folders)")
    quant.add_argument(
        "--calibration-images", type=int, default=128, help="training images used to calibrate (default 128)"
    )
    quant.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per tensor instead of per output channel (per channel is the default)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``catdog export``: export each checkpoint (and its int8 model), print where it went and how it compares."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    plan = plan_exports(args.ckpt, args.out, args.out_dir)
    settings = _quantize_settings(args)
    for ckpt, _ in plan:
        if not ckpt.is_file():
            raise CatDogError(f"--ckpt {ckpt}: file not found (train one with `catdog fit -c configs/scratch.yaml`)")
    if args.calibration_file is not None and len(plan) != 1:
        raise CatDogError(f"--calibration-file takes one --ckpt, {len(plan)} given (by default each run's own file)")
    for ckpt, target in plan:
        calibration = None if args.uncalibrated else find_calibration(ckpt, args.calibration_file)
        result = export_checkpoint(ckpt, target, calibration=calibration, opset=args.opset, atol=args.atol)
        meta: dict[str, Any] = read_onnx_metadata(result.path)
        how = f"calibrated: {calibration.map.describe()}" if calibration is not None else "uncalibrated"
        print(
            f"{ckpt} -> {result.path} ({result.size_bytes / 1e6:.1f} MB, {meta['model_name']}, "
            f"{meta['image_size']} px, {how}, max |onnxruntime - torch| = {result.max_abs_diff:.2e})"
        )
        if settings is not None:
            from catdog.export.quantize import quantize_onnx, summary

            line, warning = summary(result.path, quantize_onnx(result.path, args.data_dir, settings=settings))
            print(line)
            if warning:
                print(warning, file=sys.stderr)
    return 0


def _quantize_settings(args: argparse.Namespace) -> Any:
    """The quantization settings of ``--quantize int8``, or None; checks ``--data-dir`` before any export."""
    if args.quantize is None:
        return None
    if args.data_dir is None:
        raise CatDogError(
            "--quantize int8 needs --data-dir DIR (the fused dataset: train/ calibrates, test/ evaluates)"
        )
    for split in ("train", "test"):
        if not (Path(args.data_dir) / split).is_dir():
            raise CatDogError(
                f"--data-dir {args.data_dir}: no {split}/ folder; give the folder written by `catdog fuse`"
            )
    from catdog.export.quantize import QuantizeSettings

    return QuantizeSettings(calibration_images=args.calibration_images, per_channel=not args.per_tensor)
