"""Built-in models, written in torch alone."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ZooModel", "build_mlp", "build_cnn", "build_logreg"]

_ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class ZooModel(nn.Module):
    """A zoo network behind the common contract: raw features in, logits out; ``predict_proba`` gives probabilities."""

    def __init__(self, net: nn.Module, card) -> None:
        super().__init__()
        self.net = net
        self.card = card
        n = math.prod(card.input_shape)
        mean = torch.tensor(card.feature_mean, dtype=torch.float32) if card.feature_mean else torch.zeros(n)
        scale = torch.tensor(card.feature_scale, dtype=torch.float32) if card.feature_scale else torch.ones(n)
        self.register_buffer("feature_mean", mean.reshape(card.input_shape))
        self.register_buffer("feature_scale", scale.reshape(card.input_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.feature_mean) / self.feature_scale)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, always computed in inference mode (no dropout, frozen batch-norm)."""
        was_training = self.training
        if not was_training:  # the serving path: skip walking the modules twice per call
            return torch.softmax(self.forward(x).float(), dim=-1)
        self.eval()
        try:
            return torch.softmax(self.forward(x).float(), dim=-1)
        finally:
            self.train(was_training)


def build_mlp(input_shape, num_classes, hidden=(128, 64), dropout=0.1, activation="relu") -> nn.Module:
    if activation not in _ACT:
        raise TypeError(f"activation must be one of {sorted(_ACT)}, got {activation!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), _ACT[activation](), nn.Dropout(float(dropout))]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_cnn(input_shape, num_classes, channels=(16, 32), hidden=64, dropout=0.1) -> nn.Module:
    if len(input_shape) == 2:
        input_shape = (1, *input_shape)
    if len(input_shape) != 3:
        raise TypeError(f"cnn needs [C,H,W] input (set data.imageShape), got {list(input_shape)}")
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, int(out), 3, padding=1), nn.BatchNorm2d(int(out)), nn.ReLU()]
        c = int(out)
        if h >= 4 and w >= 4:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, int(hidden)), nn.ReLU(), nn.Dropout(float(dropout)), nn.Linear(int(hidden), num_classes)]
    body = nn.Sequential(*layers)
    if len(input_shape) == 3:
        return _Reshape(input_shape, body)
    return body


class _Reshape(nn.Module):
    def __init__(self, shape, body: nn.Module) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(x.shape[0], *self.shape))


def build_logreg(input_shape, num_classes) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
