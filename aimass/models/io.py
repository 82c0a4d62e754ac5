"""Save and load zoo models as data only: a JSON card plus safetensors (or a weights_only state dict),
and for text models the tokenizer's JSON/vocabulary files in ``tokenizer/``.

Never a pickled object: loading runs no code from the artifact, so a replaced file cannot execute
anything. This is the one format used by checkpoints, the registry and serving.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Literal

from aimass.exceptions import InvalidRequestError
from aimass.models.registry import ModelCard, build_model

__all__ = ["CARD_FILE", "WEIGHT_FILES", "load_card", "load_model", "save_model"]

CARD_FILE = "card.json"
WEIGHT_FILES = {"safetensors": "weights.safetensors", "state_dict": "weights.pt"}


def save_model(model, directory: str | Path, fmt: Literal["safetensors", "state_dict"] = "safetensors") -> Path:
    """Write ``card.json`` and the weights into ``directory``; returns the directory.

    An ONNX model (``card.runtime == "onnxruntime"``) is written as its ``model.onnx``, an ensemble as its members. An int8-quantized
    model is always written as a ``weights_only`` state dict: safetensors cannot hold packed int8 weights.
    """
    import torch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if getattr(model.card, "runtime", "torch") == "ensemble":
        return model.save(d)
    if getattr(model.card, "runtime", "torch") == "onnxruntime":
        from aimass.compress.onnx import ONNX_FILE

        shutil.copyfile(Path(model.directory) / ONNX_FILE, d / ONNX_FILE)
        (d / CARD_FILE).write_text(json.dumps(model.card.to_dict(), indent=2))
        return d
    if (getattr(model.card, "compression", None) or {}).get("quantize"):
        # The state dict object itself: its _metadata (module versions) is what the int8 modules need to load.
        torch.save(model.state_dict(), d / WEIGHT_FILES["state_dict"])
        if hasattr(model, "save_assets"):
            model.save_assets(d)
        (d / CARD_FILE).write_text(json.dumps(model.card.to_dict(), indent=2))
        return d
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(d / WEIGHT_FILES["safetensors"]))
    else:
        torch.save(state, d / WEIGHT_FILES["state_dict"])
    if hasattr(model, "save_assets"):  # a text model's tokenizer, beside the weights
        model.save_assets(d)
    (d / CARD_FILE).write_text(json.dumps(model.card.to_dict(), indent=2))
    return d


def load_card(directory: str | Path) -> ModelCard:
    p = Path(directory) / CARD_FILE
    if not p.is_file():
        raise InvalidRequestError("model directory has no card.json", got=str(directory),
                                  fix="Point at a directory written by aimass (a checkpoint or a registered model's artifacts).")
    return ModelCard.from_dict(json.loads(p.read_text()))


def load_model(directory: str | Path, device: str = "cpu"):
    """Rebuild the model from its card and load its weights without unpickling anything."""
    import torch

    d = Path(directory)
    card = load_card(d)
    if card.runtime == "ensemble":
        from aimass.compress.ensemble import EnsembleModel

        return EnsembleModel.load(d, card, device).to(device)
    if card.runtime == "onnxruntime":
        from aimass.compress.onnx import OnnxModel

        return OnnxModel(d, card).to(device)
    model = build_model(card, assets=d)
    if card.compression:
        from aimass.compress.quantize import apply_compression

        model = apply_compression(model, card.compression)
    st, pt = d / WEIGHT_FILES["safetensors"], d / WEIGHT_FILES["state_dict"]
    if st.is_file():
        from safetensors.torch import load_file

        state = load_file(str(st), device=device)
    elif pt.is_file():
        try:
            state = torch.load(pt, map_location=device, weights_only=True)
        except pickle.UnpicklingError as e:
            raise InvalidRequestError(f"{pt.name} holds more than tensors, so it was not loaded", got=str(e).splitlines()[0][:300],
                                      fix="Save a state dict of tensors (aimass.models.io.save_model), or safetensors; "
                                          "pickled objects are never loaded because they can run code.") from None
    else:
        raise InvalidRequestError("model directory has no weights file", got=str(d),
                                  fix=f"Expected {WEIGHT_FILES['safetensors']} or {WEIGHT_FILES['state_dict']}.")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(device)
