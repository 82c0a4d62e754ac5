"""Heads shared by every model family: splitting the last layer into named tasks, their losses and predictions.

A network's last layer is the heads' outputs side by side (``card.num_outputs`` wide). With one head
the model returns that tensor (logits, as before); with several it returns ``{head name: output}``.
Losses per head kind: cross-entropy (classification), BCE-with-logits (multilabel), MSE (regression),
weighted by each head's ``loss_weight``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["HeadsMixin", "activate", "head_outputs", "heads_loss", "primary_correct"]


def head_outputs(out: torch.Tensor | dict[str, torch.Tensor], heads: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The model output as ``{head name: tensor}`` whether the model returned one tensor or a dict."""
    if isinstance(out, dict):
        return out
    return {heads[0]["name"]: out}


def activate(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Logits -> what a head predicts: probabilities (classification), sigmoids (multilabel), values (regression)."""
    logits = logits.float()
    if kind == "classification":
        return torch.softmax(logits, dim=-1)
    if kind == "multilabel":
        return torch.sigmoid(logits)
    return logits


def _target(kind: str, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if kind == "classification":
        return y.long()
    return y.float().reshape(out.shape)


def heads_loss(out, targets: dict[str, torch.Tensor], heads: list[dict[str, Any]], reduction: str = "mean") -> torch.Tensor:
    """The weighted sum of every head's loss (targets by head name)."""
    outs = head_outputs(out, heads)
    total = None
    for h in heads:
        o = outs[h["name"]].float()
        y = _target(h["kind"], targets[h["name"]], o)
        if h["kind"] == "classification":
            loss = nn.functional.cross_entropy(o, y, reduction=reduction)
        elif h["kind"] == "multilabel":
            loss = nn.functional.binary_cross_entropy_with_logits(o, y, reduction="none").mean(-1)
            loss = loss.mean() if reduction == "mean" else loss.sum()
        else:
            loss = nn.functional.mse_loss(o, y, reduction="none").mean(-1)
            loss = loss.mean() if reduction == "mean" else loss.sum()
        loss = loss * float(h.get("loss_weight", 1.0))
        total = loss if total is None else total + loss
    return total


def primary_correct(out, targets: dict[str, torch.Tensor], heads: list[dict[str, Any]]) -> torch.Tensor:
    """Correct predictions of the primary head (classification: argmax; multilabel: every label right; regression: 0)."""
    h = heads[0]
    o = head_outputs(out, heads)[h["name"]].detach()
    y = targets[h["name"]]
    if h["kind"] == "classification":
        return (o.argmax(-1) == y).sum()
    if h["kind"] == "multilabel":
        return ((o > 0).float() == y.float()).all(-1).sum()
    return torch.zeros((), device=o.device)


class HeadsMixin:
    """Methods every aimass model shares. Subclasses define ``card``, ``encode(x, c)`` and ``forward(*inputs)``."""

    card: Any

    @property
    def heads(self) -> list[dict[str, Any]]:
        return self.card.head_specs

    def split_heads(self, logits: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """One tensor for a single head (as every model returned before heads), a dict for several."""
        heads = self.heads
        if len(heads) == 1:
            return logits
        outs, i = {}, 0
        for h in heads:
            outs[h["name"]] = logits[..., i:i + h["num_outputs"]]
            i += h["num_outputs"]
        return outs

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def _infer(self, fn):
        was_training = self.training
        if not was_training:
            return fn()
        self.eval()
        try:
            return fn()
        finally:
            self.train(was_training)

    @torch.no_grad()
    def predict_heads(self, x, c=None) -> dict[str, np.ndarray]:
        """Raw input (numpy or tensors, as the data step stores it) -> ``{head: probabilities | sigmoids | values}``."""

        def go():
            outs = head_outputs(self(*self.encode(x, c)), self.heads)
            return {h["name"]: activate(h["kind"], outs[h["name"]]).cpu().numpy() for h in self.heads}

        return self._infer(go)

    @torch.no_grad()
    def predict_proba(self, x, c=None) -> torch.Tensor:
        """Class probabilities of the primary (classification) head, always computed in inference mode."""
        h = self.heads[0]

        def go():
            out = head_outputs(self(*self.encode(x, c)), self.heads)[h["name"]]
            return activate(h["kind"], out)

        return self._infer(go)
