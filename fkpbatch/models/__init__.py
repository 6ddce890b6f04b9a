"""Model registry; importing this package registers every architecture."""

from . import fkpnet, lite, seed  # noqa: F401  (registration side effect)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
