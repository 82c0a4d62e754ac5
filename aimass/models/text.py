"""Text models: any Hugging Face ``transformers`` encoder with a sequence-classification head.

The architecture comes from a config (``modelArgs.config``: a dict, or filled in from ``init.from``),
the weights from the model directory (safetensors), and the tokenizer from the ``tokenizer/`` folder
saved beside the weights (JSON and vocabulary files only). Tokenisation belongs to the model:
:meth:`TextModel.encode` turns raw strings (or UTF-8 bytes) into ``input_ids``/``attention_mask``.
``trust_remote_code`` is never enabled: only architectures shipped with ``transformers`` load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aimass.exceptions import InvalidRequestError, SpecError
from aimass.models.heads import HeadsMixin

__all__ = ["MAX_TEXT_CHARS", "TOKENIZER_DIR", "TextModel", "build_text", "hf_config", "load_tokenizer"]

TOKENIZER_DIR = "tokenizer"
MAX_TEXT_CHARS = 100_000  # a longer text is refused (tokenising it would only be truncated anyway)
# Files a tokenizer directory may hold: data only, never pickles.
_TOKENIZER_SUFFIXES = {".json", ".txt", ".model", ".jinja"}
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt"}


def hf_config(config: dict[str, Any], num_labels: int):
    """A ``transformers`` config object from a plain dict (``model_type`` required)."""
    from transformers import AutoConfig

    cfg = {k: v for k, v in dict(config).items() if k not in ("architectures", "_name_or_path", "transformers_version",
                                                             "id2label", "label2id", "num_labels", "auto_map")}
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise SpecError("text-transformer needs modelArgs.config.model_type (e.g. bert, distilbert, roberta) or an init.from",
                        got=sorted(config), fix="Set init.from to a model directory (its config.json is read), or give modelArgs.config.")
    if "auto_map" in config:
        raise SpecError("this model needs custom code (auto_map in its config); trust_remote_code is never enabled",
                        fix="Use an architecture shipped with transformers (bert, distilbert, roberta, ...).")
    try:
        return AutoConfig.for_model(model_type, num_labels=int(num_labels), **cfg)
    except (ValueError, KeyError) as exc:
        raise SpecError(f"transformers does not know model_type {model_type!r}: {str(exc)[:200]}",
                        fix="Use an encoder architecture shipped with transformers.") from None


def load_tokenizer(directory: str | Path):
    """Load a tokenizer from a directory of JSON/vocabulary files (no pickles, no remote code)."""
    from transformers import AutoTokenizer

    d = Path(directory)
    if not d.is_dir() or not any(d.glob("tokenizer*.json")) and not (d / "vocab.txt").is_file():
        raise InvalidRequestError("the model directory has no tokenizer", got=str(d),
                                  fix="Save the tokenizer beside the weights (tokenizer.json or vocab.txt + tokenizer_config.json), "
                                      "e.g. tokenizer.save_pretrained(DIR); aimass writes it to <model>/tokenizer/.")
    for p in d.iterdir():
        if p.is_file() and p.suffix in _PICKLE_SUFFIXES:
            raise InvalidRequestError(f"tokenizer directory holds {p.name!r}, which is not a data file", got=p.name,
                                      fix="A tokenizer is loaded from JSON/vocabulary files only; remove pickled files.")
    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise InvalidRequestError(f"could not load the tokenizer: {str(exc).splitlines()[0][:300]}", got=str(d),
                                  fix="Save it with tokenizer.save_pretrained(DIR) from transformers.") from None


def _texts(x) -> list[str]:
    """Raw text rows as str: numpy unicode/object arrays, lists of str, or UTF-8 bytes."""
    if isinstance(x, str):
        x = [x]
    rows = x.tolist() if isinstance(x, np.ndarray) else list(x)
    out = []
    for i, r in enumerate(rows):
        if isinstance(r, (list, tuple)) and len(r) == 1:
            r = r[0]
        if isinstance(r, (bytes, bytearray, memoryview)):
            try:
                r = bytes(r).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidRequestError(f"text row {i} is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                                          fix="Send text encoded as UTF-8.") from None
        if not isinstance(r, str):
            raise InvalidRequestError(f"text row {i} is a {type(r).__name__}, not a string", got=repr(r)[:80],
                                      fix="Send text as strings (BYTES tensors in the Open Inference Protocol).")
        if len(r) > MAX_TEXT_CHARS:
            raise InvalidRequestError(f"text row {i} has {len(r)} characters, more than {MAX_TEXT_CHARS}",
                                      fix="Send shorter texts; the model reads at most its maxLength tokens anyway.")
        out.append(r)
    return out


class TextModel(HeadsMixin, nn.Module):
    """A transformers sequence classifier behind the aimass contract: raw text in, logits (or ``{head: logits}``) out."""

    def __init__(self, card, assets: str | Path | None = None) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        self.card = card
        args = dict(card.args)
        self.max_length = int(args.get("maxLength", 128))
        config = args.get("config")
        if not isinstance(config, dict):
            raise SpecError("text-transformer needs modelArgs.config (a transformers config dict) or an init.from",
                            got=config, fix="Set train.init.from to a model directory, s3:// prefix or MLflow model.")
        self.backbone = AutoModelForSequenceClassification.from_config(hf_config(config, card.num_outputs))
        self.tokenizer = None
        if args.get("lora"):
            from aimass.models.transfer import add_lora

            add_lora(self, args["lora"])
        if assets is not None:
            self.tokenizer = load_tokenizer(Path(assets) / (card.preprocess or {}).get("tokenizer", TOKENIZER_DIR))

    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, x, c=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw texts -> (input_ids, attention_mask) on the model's device; padded to the longest row, cut at maxLength."""
        if self.tokenizer is None:
            raise InvalidRequestError("this text model has no tokenizer", fix="Load it from a directory with a tokenizer/ folder.")
        if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], torch.Tensor):
            return x  # already tokenised
        enc = self.tokenizer(_texts(x), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        dev = self._device()
        return enc["input_ids"].to(dev), enc["attention_mask"].to(dev)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return self.split_heads(self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits)

    def save_assets(self, directory: str | Path) -> None:
        """Write the tokenizer beside the weights (``tokenizer/``: JSON and vocabulary files)."""
        if self.tokenizer is None:
            raise InvalidRequestError("this text model has no tokenizer to save",
                                      fix="Build it through aimass (init.from or modelArgs.tokenizer) so its tokenizer travels with it.")
        d = Path(directory) / (self.card.preprocess or {}).get("tokenizer", TOKENIZER_DIR)
        self.tokenizer.save_pretrained(str(d))
        for p in d.iterdir():  # keep the folder loadable by load_tokenizer: data files only
            if p.is_file() and p.suffix not in _TOKENIZER_SUFFIXES:
                p.unlink()


def build_text(input_shape, num_outputs, **_: Any) -> nn.Module:  # pragma: no cover - build_model builds TextModel directly
    raise TypeError("text-transformer is built by aimass.models.registry.build_model")
