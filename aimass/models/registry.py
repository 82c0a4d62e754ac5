"""The model zoo: a name -> builder registry with one contract.

Every zoo model takes raw float32 features shaped ``[batch, *input_shape]`` and returns logits
``[batch, num_classes]``; :class:`ZooModel` wraps it with the input normalisation fitted by the data
step (as buffers, so it travels in the state dict) and a ``predict_proba`` that returns class
probabilities. Nothing here is pickled: a model is rebuilt from its :class:`ModelCard` and weights.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MODELS", "ModelCard", "model_names", "register_model", "build_model", "describe_models"]

# name -> ("module:function", one-line description). Imported lazily: listing models needs no torch.
MODELS: dict[str, tuple[str, str]] = {
    "mlp": ("aimass.models.zoo:build_mlp", "Multi-layer perceptron over flattened features (args: hidden, dropout, activation)."),
    "cnn": ("aimass.models.zoo:build_cnn", "Small convolutional net for [C,H,W] images (args: channels, hidden, dropout)."),
    "logreg": ("aimass.models.zoo:build_logreg", "Multinomial logistic regression (a linear baseline)."),
}


def model_names() -> list[str]:
    return sorted(MODELS)


def describe_models() -> list[dict[str, str]]:
    return [{"name": n, "description": MODELS[n][1]} for n in model_names()]


def register_model(name: str, builder: str, description: str = "") -> None:
    """Add a model: ``builder`` is "module:function" taking (input_shape, num_classes, **args) -> nn.Module."""
    MODELS[name] = (builder, description)


@dataclass
class ModelCard:
    """Everything needed to rebuild a model besides its weights. Stored as JSON next to the weights."""

    name: str
    input_shape: list[int]
    num_classes: int
    args: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    feature_mean: list[float] | None = None
    feature_scale: list[float] | None = None
    input_name: str = "input"
    output_name: str = "probabilities"
    # Set by the compress step, e.g. {"quantize": "dynamic_int8"}: structure re-applied before the weights load.
    compression: dict[str, Any] | None = None
    # "torch" (weights + card), "onnxruntime" (model.onnx + card, see aimass.compress.onnx) or "ensemble" (members).
    runtime: str = "torch"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def build_model(card: ModelCard):
    """Build the (untrained) :class:`~aimass.models.zoo.ZooModel` described by ``card``."""
    from aimass.exceptions import SpecError
    from aimass.models.zoo import ZooModel

    if card.name not in MODELS:
        raise SpecError(f"unknown model {card.name!r}", fix=f"Known models: {', '.join(model_names())}.")
    module, _, fn = MODELS[card.name][0].partition(":")
    builder = getattr(importlib.import_module(module), fn)
    try:
        net = builder(tuple(card.input_shape), card.num_classes, **card.args)
    except TypeError as exc:
        raise SpecError(f"bad modelArgs for {card.name!r}: {exc}", got=card.args,
                        fix="See `aimass models list` for each model's arguments.") from None
    return ZooModel(net, card)
