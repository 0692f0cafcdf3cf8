"""What every embedding model looks like from the outside, and the ONNX Runtime engine."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOP_TAGS = 5
# One model run at a time per process. ONNX Runtime already spreads one run over every core;
# concurrent runs (a server's request threads) only multiplied the activation memory, which
# its arena then kept: 40 threads took a server from 0.1 to 1.1 GB.
_RUN_LOCK = threading.RLock()


@dataclass(frozen=True)
class ModelOutput:
    """One batch through a model."""

    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    tags: list[list[tuple[str, float]]]  # per image: top class names with probabilities


@dataclass
class EmbeddingModel:
    """An ONNX graph that maps a uint8 NHWC batch to features (and optionally logits).

    ``model_id`` names the weights and the meaning of the vectors: two models with the same
    id give the same vectors, and a collection refuses queries from any other id.
    """

    name: str
    model_id: str
    onnx_path: Path
    input_size: int = 224
    labels: list[str] | None = None
    providers: list[str] | None = None
    threads: int | None = None
    _session: object = field(default=None, repr=False)

    @property
    def session(self):
        if self._session is None:
            with _RUN_LOCK:  # one session, however many threads ask at once
                if self._session is None:
                    self._session = make_session(self.onnx_path, self.providers, self.threads)
        return self._session

    @property
    def dim(self) -> int:
        return int(self.session.get_outputs()[0].shape[1])

    def embed(self, pixels: np.ndarray) -> ModelOutput:
        """Vectors and tags for ``pixels`` of shape (n, size, size, 3), uint8 RGB."""
        if pixels.ndim != 4 or pixels.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected (n, {self.input_size}, {self.input_size}, 3), got {pixels.shape}")
        with _RUN_LOCK:
            outputs = self.session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)})
        vectors = l2_normalize(outputs[0].astype(np.float32, copy=False))
        tags = _top_tags(outputs[1], self.labels) if len(outputs) > 1 and self.labels else [[] for _ in vectors]
        return ModelOutput(vectors=vectors, tags=tags)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _top_tags(logits: np.ndarray, labels: list[str], k: int = TOP_TAGS) -> list[list[tuple[str, float]]]:
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1)[:, :k]
    return [[(labels[j], round(float(probs[i, j]), 4)) for j in row] for i, row in enumerate(top)]


def available_providers() -> list[str]:
    """GPU first where ONNX Runtime has it, CPU always."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    wanted = [p for p in ("CUDAExecutionProvider", "CoreMLExecutionProvider") if p in have]
    return wanted + ["CPUExecutionProvider"]


def make_session(path: Path, providers: list[str] | None, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads or int(os.environ.get("IMAGESPACE_THREADS", "0")) or (os.cpu_count() or 1)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No busy-waiting between operators: the decode threads share these cores, and spinning
    # cost about 20% more CPU per image while indexing (measured 21.2 vs 17.1 ms/image).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=providers or available_providers())
