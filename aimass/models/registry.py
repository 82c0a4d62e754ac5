"""The model zoo: a name -> builder registry with one contract.

A :class:`ModelCard` describes everything about a model except its weights: the raw input it takes
(``input_kind``: tensor, table, image or text), the preprocessing that turns that input into tensors
(``preprocess``: the data step's fitted encoders plus model-side items such as the tokenizer
directory), its heads (one or more named tasks: classification, multilabel, regression) and where
its weights started (``init_from`` / ``lineage``). Training, evaluation, registration and serving all
read the card; nothing is pickled: a model is rebuilt from its card, its weights and (for text) the
tokenizer files saved beside them.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HEAD_KINDS", "INPUT_KINDS", "MODELS", "ModelCard", "build_model", "describe_models", "model_names", "register_model"]

# name -> ("module:function", one-line description). Imported lazily: listing models needs no torch.
MODELS: dict[str, tuple[str, str]] = {
    "mlp": ("aimass.models.zoo:build_mlp", "Multi-layer perceptron over flattened features (args: hidden, dropout, activation)."),
    "cnn": ("aimass.models.zoo:build_cnn", "Small convolutional net for [C,H,W] images (args: channels, hidden, dropout)."),
    "logreg": ("aimass.models.zoo:build_logreg", "Multinomial logistic regression (a linear baseline)."),
    "resnet": ("aimass.models.vision:build_resnet", "Small ResNet for [C,H,W] images, torch only (args: widths, blocks, dropout)."),
    "vit": ("aimass.models.vision:build_vit", "Small Vision Transformer, torch only (args: patch, dim, depth, heads, mlpRatio, dropout)."),
    "hf-vision": ("aimass.models.vision:build_hf_vision", "A transformers vision model built from a config (args: config = {model_type: vit|resnet|..., ...})."),
    "tab-mlp": ("aimass.models.tabular:build_tab_mlp", "MLP over numeric columns plus embeddings of categorical columns (args: hidden, embedDim, dropout)."),
    "text-transformer": ("aimass.models.text:build_text", "Any transformers encoder with a sequence-classification head (args: config, tokenizer, maxLength)."),
}

INPUT_KINDS = ("tensor", "table", "image", "text")
HEAD_KINDS = ("classification", "multilabel", "regression")
# What each family takes; models missing here take any numeric input (tensor, table numerics, images).
MODEL_INPUT_KINDS: dict[str, tuple[str, ...]] = {
    "text-transformer": ("text",), "tab-mlp": ("table", "tensor"), "resnet": ("image", "tensor"), "vit": ("image", "tensor"),
    "hf-vision": ("image", "tensor"), "cnn": ("image", "tensor"),
}


def model_names() -> list[str]:
    return sorted(MODELS)


def describe_models() -> list[dict[str, str]]:
    return [{"name": n, "description": MODELS[n][1]} for n in model_names()]


def register_model(name: str, builder: str, description: str = "") -> None:
    """Add a model: ``builder`` is "module:function" taking (input_shape, num_outputs, **args) -> nn.Module."""
    MODELS[name] = (builder, description)


@dataclass
class ModelCard:
    """Everything needed to rebuild a model besides its weights. Stored as JSON next to the weights.

    ``heads``: ``[{"name", "kind", "class_names", "loss_weight"}]``; empty means one classification
    head named ``label`` over ``class_names`` (every card written before heads existed).
    """

    name: str
    input_shape: list[int]
    num_classes: int
    args: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    feature_mean: list[float] | None = None
    feature_scale: list[float] | None = None
    input_name: str = "input"
    output_name: str = "probabilities"
    input_kind: str = "tensor"
    heads: list[dict[str, Any]] = field(default_factory=list)
    preprocess: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    # Set by the compress step, e.g. {"quantize": "dynamic_int8"}: structure re-applied before the weights load.
    compression: dict[str, Any] | None = None
    # "torch" (weights + card), "onnxruntime" (model.onnx + card, see aimass.compress.onnx) or "ensemble" (members).
    runtime: str = "torch"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    @property
    def head_specs(self) -> list[dict[str, Any]]:
        """The heads, normalised: name, kind, class_names, loss_weight, num_outputs (primary first)."""
        heads = self.heads or [{"name": "label", "kind": "classification",
                                "class_names": list(self.class_names) or [str(i) for i in range(self.num_classes)]}]
        out = []
        for h in heads:
            names = list(h.get("class_names") or [])
            n = int(h.get("num_outputs") or len(names))
            out.append({"name": str(h["name"]), "kind": str(h.get("kind", "classification")), "class_names": names,
                        "loss_weight": float(h.get("loss_weight", 1.0)), "num_outputs": n})
        return out

    @property
    def num_outputs(self) -> int:
        """Width of the network's last layer: the heads' outputs side by side."""
        return sum(h["num_outputs"] for h in self.head_specs)

    @property
    def multi_head(self) -> bool:
        return len(self.head_specs) > 1


def build_model(card: ModelCard, assets: str | Path | None = None):
    """Build the (untrained) model described by ``card``.

    ``assets`` is the model directory the card came from: text models read their tokenizer there.
    """
    from aimass.exceptions import SpecError

    if card.name not in MODELS:
        raise SpecError(f"unknown model {card.name!r}", fix=f"Known models: {', '.join(model_names())}.")
    if card.input_kind not in INPUT_KINDS:
        raise SpecError(f"unknown input kind {card.input_kind!r}", fix=f"One of {', '.join(INPUT_KINDS)}.")
    allowed = MODEL_INPUT_KINDS.get(card.name)
    if allowed and card.input_kind not in allowed:
        raise SpecError(f"model {card.name!r} does not take {card.input_kind} input", got=card.input_kind,
                        fix=f"{card.name} takes {', '.join(allowed)} input; pick a model for {card.input_kind} data "
                            "(text: text-transformer; image: resnet, vit, cnn; table: tab-mlp, mlp).")
    for h in card.head_specs:
        if h["kind"] not in HEAD_KINDS:
            raise SpecError(f"head {h['name']!r} has unknown kind {h['kind']!r}", fix=f"One of {', '.join(HEAD_KINDS)}.")
    module, _, fn = MODELS[card.name][0].partition(":")
    builder = getattr(importlib.import_module(module), fn)
    if card.name == "text-transformer":
        from aimass.models.text import TextModel

        return TextModel(card, assets)
    from aimass.models.zoo import ZooModel

    try:
        if card.name == "tab-mlp":
            net = builder(tuple(card.input_shape), card.num_outputs, card=card, **card.args)
        else:
            net = builder(tuple(card.input_shape), card.num_outputs, **card.args)
    except TypeError as exc:
        raise SpecError(f"bad modelArgs for {card.name!r}: {exc}", got=card.args,
                        fix="See `aimass models list` for each model's arguments.") from None
    return ZooModel(net, card)
