"""The LitServe API: one ONNX classifier per endpoint; its methods run in the inference worker processes."""

import logging
import os
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Depends, Request
from litserve.loops.simple_loops import BatchedLoop, SingleLoop

from catdog.data.transforms import normalize
from catdog.export.runtime import create_session, softmax
from catdog.serving.http import read_image
from catdog.serving.models import ServedModel

logger = logging.getLogger("catdog.serve")


def configure_logging(level: str) -> None:
    """One log format for the main process and every worker (``level``: debug, info, warning, error)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(level.upper())
    logging.getLogger("litserve.loops.loops").addFilter(_no_setup_traceback)


class ModelLoadError(Exception):
    """A worker could not load its model; the one log line before it says why."""


def _no_setup_traceback(record: logging.LogRecord) -> bool:
    """Keep LitServe's "Error setting up worker" line but not the traceback of a :class:`ModelLoadError`."""
    if record.exc_info and isinstance(record.exc_info[1], ModelLoadError):
        record.exc_info = None
    return True


class _WorkerLoopMixin:
    """A worker loop that exits with one log line, not a traceback, when the server's queues are gone."""

    def __call__(self, lit_api: "OnnxClassifierAPI", *args: Any, **kwargs: Any) -> None:
        try:
            super().__call__(lit_api, *args, **kwargs)  # type: ignore[misc]
        except (EOFError, OSError) as err:  # the manager process that holds the queues has died
            logger.warning(
                "model %r: worker pid %d lost the request queues (%s); exiting",
                lit_api.model.name,
                os.getpid(),
                type(err).__name__,
            )


class WorkerBatchedLoop(_WorkerLoopMixin, BatchedLoop):
    """LitServe's batched loop, quiet when the queues are gone."""


class WorkerSingleLoop(_WorkerLoopMixin, SingleLoop):
    """LitServe's one-request loop, quiet when the queues are gone."""


class OnnxClassifierAPI(ls.LitAPI):
    """One ONNX classifier behind ``POST /predict/<name>``, with dynamic batching."""

    def __init__(
        self,
        model: ServedModel,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
        threads: int = 0,
        log_level: str = "info",
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout if max_batch_size > 1 else 0.0,
            api_path=model.api_path,
            loop=WorkerBatchedLoop() if max_batch_size > 1 else WorkerSingleLoop(),
        )
        self.model = model
        self.threads = threads
        self.log_level = log_level
        self.session: Any = None

    def setup(self, device: str) -> None:
        configure_logging(self.log_level)  # a fresh (spawned) process
        try:
            self.session = create_session(self.model.path, threads=self.threads)
        except Exception as err:  # onnxruntime raises its own types
            reason = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            logger.error("model %r: the worker cannot load %s (%s)", self.model.name, self.model.path, reason)
            raise ModelLoadError(self.model.path) from None
        logger.info(
            "model %r loaded from %s by worker pid %d (%d px, batches up to %d)",
            self.model.name,
            self.model.path,
            os.getpid(),
            self.model.config.image_size,
            self.max_batch_size,
        )

    def authorize(self, request: Request) -> None:
        """LitServe's authorization hook (a FastAPI dependency of the endpoint, run in the HTTP processes).

        Runs before the body is read; the keys live in the app's state, never in this object (which
        travels to the inference workers).
        """
        request.app.state.catdog_keys.check(request.headers.get("authorization"), request.headers.get("x-api-key"))

    def decode_request(self, request: Annotated[np.ndarray, Depends(read_image)]) -> np.ndarray:
        """uint8 (size, size, 3) from :func:`read_image` -> normalised float32 (3, size, size)."""
        return normalize(request, self.model.config)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities: (N, 2) for a batch, (2,) for a single image (batching off)."""
        single = x.ndim == 3
        images = x[None] if single else x
        logger.debug("model %r: batch of %d", self.model.name, len(images))
        (logits,) = self.session.run(None, {self.model.input_name: np.ascontiguousarray(images, np.float32)})
        probs = softmax(logits)
        return probs[0] if single else probs

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        class_id = int(np.argmax(output))
        return {
            "model": self.model.name,
            "label": self.model.classes[class_id],
            "class_id": class_id,
            "probabilities": {name: float(p) for name, p in zip(self.model.classes, output, strict=True)},
            "calibrated": self.model.calibration is not None,
        }
