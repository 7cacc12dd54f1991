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
whose message says why (:func:`explain_disagreement`): torch not deterministic, the exported graph computing
something else, or a numerically ill-conditioned network (float32 torch itself far from float64 torch, with
the layer where its error grows and the first BatchNorm layer whose inputs its statistics do not describe).
``--quantize int8`` also writes ``NAME.int8.onnx`` beside each file (:mod:`catdog.export.quantize`).
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

import numpy as np

from catdog import DISPLAY_NAMES, CatDogError, __version__
from catdog.data.transforms import PreprocessConfig
from catdog.utils import MODEL_NAME_RULE, file_sha256, is_valid_model_name

if TYPE_CHECKING:
    from torch import nn

#: Names of the graph's input and output.
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ExportError(CatDogError):
    """The exported model failed its verification (checker or onnxruntime vs torch)."""


@dataclass(frozen=True)
class ExportResult:
    """A verified ONNX file and how close onnxruntime came to torch."""

    path: Path
    max_abs_diff: float
    size_bytes: int


def onnx_metadata(
    preprocess_config: PreprocessConfig, model_name: str, checkpoint_sha256: str | None = None
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
        "output": "logits; softmax gives the class probabilities",
        "catdog_version": __version__,
        "torch_version": torch.__version__,
    }


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def verify_onnx(
    path: str | os.PathLike[str],
    network: nn.Module,
    image_size: int,
    batch_sizes: Sequence[int] = (1, 3),
    atol: float = 1e-4,
    seed: int = 0,
    label: str | os.PathLike[str] | None = None,
) -> float:
    """``onnx.checker`` plus onnxruntime vs ``network`` on random batches; returns the max abs difference.

    Raises :class:`ExportError` when the checker fails or the difference is above ``atol`` (or NaN); the
    message names the file as ``label`` (default ``path``) and says why (:func:`explain_disagreement`).
    """
    import onnx
    import onnxruntime as ort
    import torch

    name = path if label is None else label
    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except Exception as err:  # onnx raises ValidationError / InferenceError
        raise ExportError(f"{name}: onnx.checker rejected the exported model: {err}") from err
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst, worst_case = 0.0, None
    network.eval()
    for batch in batch_sizes:
        images = torch.randn(batch, 3, image_size, image_size, generator=generator)
        with torch.inference_mode():
            expected = network(images).float().numpy()
        (actual,) = session.run(None, {INPUT_NAME: images.numpy()})
        if actual.shape != expected.shape:
            raise ExportError(f"{name}: onnxruntime output shape {actual.shape} != torch {expected.shape}")
        diff = float(np.abs(actual - expected).max())
        if not diff <= worst:  # also keeps a NaN
            worst, worst_case = diff, (images, actual)
    if not worst <= atol:
        images, actual = worst_case  # type: ignore[misc]
        raise ExportError(
            f"{name}: onnxruntime and torch disagree (max abs difference {worst:.3g} > {atol:g}); the file was not "
            f"written. {explain_disagreement(network, images, actual, atol)}"
        )
    return worst


#: Relative float32 error (against float64) past which a layer's output counts as lost to rounding.
LOST_TO_ROUNDING = 1e-4
#: RMS distance, in running standard deviations, past which a BatchNorm layer's statistics misdescribe its input.
BN_MISFIT_Z = 3.0


def explain_disagreement(network: nn.Module, images: Any, onnx_output: np.ndarray, atol: float = 1e-4) -> str:
    """Why onnxruntime's ``onnx_output`` for ``images`` differs from ``network`` (torch, eval mode), in words.

    Float64 torch on a copy of the network is the reference: when float32 torch is within ``atol`` of it, the
    exported graph computes something else; when float32 torch itself is not, the network is numerically
    ill-conditioned (no float32 runtime can reproduce torch's rounding), and the message names the image, the
    first layer whose float32 output is off by more than :data:`LOST_TO_ROUNDING` relative, and the first
    BatchNorm layer whose eval inputs lie more than :data:`BN_MISFIT_Z` running standard deviations (RMS) from
    its running mean. A network that answers the same input differently twice is reported as such.
    """
    import copy

    import torch

    network.eval()
    with torch.inference_mode():
        first, again = network(images).float(), network(images).float()
    if not torch.allclose(first, again, rtol=0, atol=0, equal_nan=True):
        return (
            "torch itself gives different answers for the same input in eval mode (a random operation in the "
            "forward pass?), so no exported file can match it."
        )
    reference = copy.deepcopy(network).double().eval()
    with torch.inference_mode():
        exact = reference(images.double())
    torch_error = (first.double() - exact).abs()
    torch_off, onnx_off = float(torch_error.max()), float((torch.from_numpy(onnx_output).double() - exact).abs().max())
    if torch_off <= atol:
        return (
            f"float32 torch is within {torch_off:.2g} of float64 torch but onnxruntime is "
            f"{onnx_off:.3g} away: the exported graph computes something else. Check that the network "
            "was built with exportable=True and is deterministic in eval."
        )
    index = int((torch_error.flatten(1).amax(dim=1) if torch_error.ndim > 1 else torch_error).argmax())
    image = images[index : index + 1]
    outputs32, zscores = _layer_outputs(network, image)
    outputs64, _ = _layer_outputs(reference, image.double())
    errors = {
        name: float((out - outputs64[name]).norm() / outputs64[name].norm().clamp_min(1e-30))
        for name, out in outputs32.items()
        if name in outputs64
    }
    lost = next(((name, error) for name, error in errors.items() if error > LOST_TO_ROUNDING), None)
    peaks = {name: float(out.abs().max()) for name, out in outputs64.items() if out.numel()}
    where = ""
    if peaks:
        peak = max(peaks, key=peaks.__getitem__)
        where = f" Its activations reach {peaks[peak]:.3g} (at {peak!r})"
        where += f"; its float32 error passes {LOST_TO_ROUNDING:g} relative at {lost[0]!r}." if lost else "."
    misfit = next(((name, z) for name, z in zscores.items() if z > BN_MISFIT_Z), None)
    batchnorm = ""
    if misfit is not None:
        largest = max(zscores, key=zscores.__getitem__)
        batchnorm = (
            f" BatchNorm layer {misfit[0]!r} is the first whose eval inputs lie {misfit[1]:.3g} running standard "
            f"deviations (RMS) from its running mean, {zscores[largest]:.3g} at {largest!r}: its running "
            "statistics do not describe the eval-mode activations (typically estimated on too few images, or "
            "left from too few training steps)."
        )
    return (
        f"The network is numerically ill-conditioned: on image {index} of that random batch, float32 torch itself "
        f"is {torch_off:.3g} away from float64 torch (onnxruntime: {onnx_off:.3g}), so no float32 "
        f"runtime can reproduce its answers.{where}{batchnorm} Train on more images or for longer before exporting."
    )


def _layer_outputs(network: nn.Module, images: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """Every submodule's tensor output for ``images`` (float64 copies, in call order), and the RMS z-score of
    each BatchNorm layer's input against its running statistics."""
    import torch

    outputs: dict[str, torch.Tensor] = {}
    zscores: dict[str, float] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor) and name not in outputs:
                outputs[name] = output.detach().double().clone()
            mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and mean is not None and var is not None:
                shape = (1, -1) + (1,) * (inputs[0].ndim - 2)
                z = (inputs[0].double() - mean.double().view(shape)) / (var.double().view(shape) + module.eps).sqrt()
                zscores[name] = float(z.pow(2).mean().sqrt())

        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in network.named_modules() if name]
    try:
        with torch.inference_mode():
            network(images)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, zscores


def export_onnx(
    network: nn.Module,
    preprocess_config: PreprocessConfig,
    out_path: str | os.PathLike[str],
    model_name: str,
    checkpoint_sha256: str | None = None,
    *,
    opset: int | None = None,
    atol: float = 1e-4,
) -> ExportResult:
    """Export ``network`` (logits for (N, 3, S, S) images, S = ``preprocess_config.image_size``) to ``out_path``.

    Dynamic batch axis, weights inside the one file, catdog metadata, then :func:`verify_onnx`. The file
    is written next to ``out_path`` and renamed over it only once verified, so a failed export leaves
    any previous file untouched and no partial one.
    """
    import onnx
    import torch

    out = Path(out_path)
    if out.suffix != ".onnx":
        raise CatDogError(f"--out {out}: the output file name must end in .onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.onnx")
    size = preprocess_config.image_size
    network = network.eval()
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
        raise ExportError(f"{out}: torch.onnx.export failed for {model_name}: {type(err).__name__}: {err}") from err
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in onnx_metadata(preprocess_config, model_name, checkpoint_sha256).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"catdog {model_name}: cat (0) vs dog (1) logits for {size}x{size} normalised images"
    try:
        onnx.save_model(proto, tmp, save_as_external_data=False)
        diff = verify_onnx(tmp, network, size, atol=atol, label=out)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, diff, out.stat().st_size)


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
    ckpt_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, opset: int | None = None, atol: float = 1e-4
) -> ExportResult:
    """Load a :class:`~catdog.training.module.CatDogClassifier` checkpoint (exportable layers) and export it."""
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
        opset=opset,
        atol=atol,
    )


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
    for ckpt, target in plan:
        result = export_checkpoint(ckpt, target, opset=args.opset, atol=args.atol)
        meta: dict[str, Any] = read_onnx_metadata(result.path)
        print(
            f"{ckpt} -> {result.path} ({result.size_bytes / 1e6:.1f} MB, {meta['model_name']}, "
            f"{meta['image_size']} px, max |onnxruntime - torch| = {result.max_abs_diff:.2e})"
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
