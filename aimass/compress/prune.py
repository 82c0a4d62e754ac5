"""Magnitude pruning: unstructured (single weights) or structured (whole output channels / neurons).

Honest about speed: unstructured sparsity leaves the tensors dense, so dense CPU/GPU kernels run exactly
as fast as before; it only helps size after sparse encoding or on sparse-aware runtimes. Structured
pruning zeroes whole rows (output neurons / channels); the shapes stay the same here too, so speed does not
change unless a later step shrinks the layers. The trade-off report shows both effects as measured.
"""

from __future__ import annotations

import copy
from typing import Any

from aimass.exceptions import SpecError

__all__ = ["prune_magnitude", "sparsity"]


def _targets(model):
    from torch import nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def sparsity(model) -> float:
    """Share of exactly-zero weights over the Linear and Conv2d layers."""
    zeros = total = 0
    for _, m in _targets(model):
        w = m.weight.detach()
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def prune_magnitude(model, amount: float, structured: bool = False) -> tuple[Any, dict[str, Any]]:
    """Zero the ``amount`` share of weights with the smallest magnitude in every Linear/Conv2d layer.

    ``structured=True`` removes whole output rows by their L2 norm (never the classifier's last layer, whose
    rows are the classes). Pruning is made permanent (no masks or hooks remain), so the result saves and
    loads like any model. Returns a pruned copy and an info dict.
    """
    import torch.nn.utils.prune as tprune

    if not 0 < amount < 1:
        raise SpecError("pruning amount must be between 0 and 1 (exclusive)", got=amount, fix="Use e.g. amount: 0.5.")
    pruned = copy.deepcopy(model)
    layers = _targets(pruned)
    if not layers:
        raise SpecError("pruning does not apply: the model has no Linear or Conv2d layer",
                        got=type(getattr(model, "net", model)).__name__, fix="Use another compression method.")
    if structured:
        layers = layers[:-1]  # the last layer's rows are the classes: never drop a class
        if not layers:
            raise SpecError("structured pruning needs a hidden layer; this model has only its output layer",
                            fix="Use structured: false (unstructured pruning) for a linear model.")
    for _, m in layers:
        if structured:
            tprune.ln_structured(m, name="weight", amount=amount, n=2, dim=0)
        else:
            tprune.l1_unstructured(m, name="weight", amount=amount)
        tprune.remove(m, "weight")
    pruned.eval()
    return pruned, {"method": "prune", "amount": amount, "structured": structured, "layers": [n for n, _ in layers],
                    "sparsity": sparsity(pruned)}
