"""The LitServe API: one ONNX classifier per endpoint; its methods run in the inference worker processes."""

import logging
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Depends

from catdog.serving.http import read_image
from catdog.serving.models import ServedModel, create_session, softmax
from catdog.transforms import normalize

logger = logging.getLogger("catdog.serve")


def configure_logging(level: str) -> None:
    """One log format for the main process and every worker (``level``: debug, info, warning, error)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(level.upper())


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
        )
        self.model = model
        self.threads = threads
        self.log_level = log_level
        self.session: Any = None

    def setup(self, device: str) -> None:
        configure_logging(self.log_level)  # a fresh (spawned) process
        self.session = create_session(self.model.path, threads=self.threads)
        logger.info(
            "model %r loaded from %s (%d px, batches up to %d)",
            self.model.name,
            self.model.path,
            self.model.config.image_size,
            self.max_batch_size,
        )

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
        }
