"""Tabular models: an MLP over the scaled numeric columns plus an embedding per categorical column."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TabMLP", "build_tab_mlp"]


class TabMLP(nn.Module):
    """``forward(x_numeric [N, F_num], c [N, F_cat] int64 codes, 0 = missing/unseen) -> logits``."""

    takes_categories = True

    def __init__(self, num_numeric: int, cardinalities: list[int], num_outputs: int, hidden=(128, 64), embed_dim: int | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.num_categorical = len(cardinalities)
        # one row per code (code 0 = missing), width ~ 1.6 * cardinality^0.56 capped at 32 unless set
        dims = [int(embed_dim) if embed_dim else min(32, max(2, round(1.6 * (k + 1) ** 0.56))) for k in cardinalities]
        self.embeddings = nn.ModuleList([nn.Embedding(k + 1, d) for k, d in zip(cardinalities, dims, strict=True)])
        layers: list[nn.Module] = []
        width = num_numeric + sum(dims)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(float(dropout))]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        parts = [x.reshape(x.shape[0], -1)]
        if self.num_categorical:
            if c is None:
                c = torch.zeros((x.shape[0], self.num_categorical), dtype=torch.long, device=x.device)
            # codes past the vocabulary (a category unseen at training) count as missing
            c = torch.stack([torch.where(c[:, i] < e.num_embeddings, c[:, i], torch.zeros_like(c[:, i]))
                             for i, e in enumerate(self.embeddings)], 1)
            parts += [e(c[:, i]) for i, e in enumerate(self.embeddings)]
        return self.head(self.body(torch.cat(parts, 1)))


def build_tab_mlp(input_shape, num_outputs, card=None, hidden=(128, 64), embedDim=None, dropout=0.1, cardinalities=None) -> nn.Module:
    """Cardinalities come from the card's ``preprocess["categorical"]["vocab"]`` (or ``modelArgs.cardinalities``)."""
    if cardinalities is None:
        cat = ((card.preprocess if card is not None else {}) or {}).get("categorical") or {}
        vocab = cat.get("vocab") or {}
        cardinalities = [len(vocab.get(col, [])) for col in cat.get("columns", list(vocab))]
    return TabMLP(math.prod(input_shape), [int(k) for k in cardinalities], num_outputs, hidden, embedDim, dropout)
