"""The model zoo (see :mod:`aimass.models.registry`)."""

from aimass.models.registry import (
    MODELS,
    ModelCard,
    build_model,
    describe_models,
    model_names,
    register_model,
)

__all__ = ["MODELS", "ModelCard", "build_model", "describe_models", "model_names", "register_model"]
