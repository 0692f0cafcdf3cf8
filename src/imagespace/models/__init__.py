"""Embedding models: a registry by name, the pretrained CNN, ONNX export and runtime."""

from .base import EmbeddingModel, ModelOutput
from .registry import DEFAULT_MODEL, create_model, list_models, model_info, register_model, resolve_model_spec

__all__ = ["DEFAULT_MODEL", "EmbeddingModel", "ModelOutput", "create_model", "list_models", "model_info", "register_model",
           "resolve_model_spec"]
