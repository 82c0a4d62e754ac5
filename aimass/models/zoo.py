"""Built-in models, written in torch alone."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from aimass.models.heads import HeadsMixin

__all__ = ["AsImage", "ZooModel", "build_cnn", "build_logreg", "build_mlp"]

_ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class ZooModel(HeadsMixin, nn.Module):
    """A zoo network behind the common contract: raw input in, logits (or ``{head: logits}``) out.

    The input normalisation travels in the state dict as buffers: tensor and table inputs use the
    data step's ``feature_mean``/``feature_scale``; image inputs arrive as uint8 ``[N,C,H,W]`` and are
    divided by 255 and normalised per channel with the card's ``preprocess["image"]`` mean/std (on
    the 0..1 scale). Table models also take the int64 category codes ``c``.
    """

    def __init__(self, net: nn.Module, card) -> None:
        super().__init__()
        self.net = net
        self.card = card
        self.kind = card.input_kind
        if self.kind == "image":
            c = int(card.input_shape[0]) if card.input_shape else 1
            img = (card.preprocess or {}).get("image") or {}
            mean = img.get("mean") or card.feature_mean or [0.0] * c
            std = img.get("std") or card.feature_scale or [1.0] * c
            if max(abs(float(v)) for v in mean) > 1.0:  # statistics on the 0..255 scale: bring them to 0..1
                mean, std = [float(v) / 255.0 for v in mean], [float(v) / 255.0 for v in std]
            self.register_buffer("feature_mean", torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1))
            self.register_buffer("feature_scale", torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1))
        else:
            n = math.prod(card.input_shape)
            mean = torch.tensor(card.feature_mean, dtype=torch.float32) if card.feature_mean else torch.zeros(n)
            scale = torch.tensor(card.feature_scale, dtype=torch.float32) if card.feature_scale else torch.ones(n)
            self.register_buffer("feature_mean", mean.reshape(card.input_shape))
            self.register_buffer("feature_scale", scale.reshape(card.input_shape))

    def encode(self, x, c=None) -> tuple:
        """Raw input (numpy arrays or tensors) -> the tensors ``forward`` takes, on the model's device."""
        dev = self._device()
        if self.kind == "image":
            t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
            return (t.to(dev),)
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if t.dtype != torch.float32:
            t = t.float()
        if t.device != dev:
            t = t.to(dev)
        if self.kind == "table" and getattr(self.net, "takes_categories", False):
            n_cat = self.net.num_categorical
            if c is None:
                ct = torch.zeros((t.shape[0], n_cat), dtype=torch.long, device=dev)
            else:
                ct = c if isinstance(c, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(c, dtype=np.int64))
                ct = ct.long().to(dev)
            return (t, ct)
        return (t,)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None):
        if self.kind == "image":
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self.feature_mean) / self.feature_scale
        out = self.net(x, c) if c is not None else self.net(x)
        return self.split_heads(out)


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
        return AsImage(input_shape, body)
    return body


class AsImage(nn.Module):
    """Reshapes flat rows to [N, C, H, W] (tensor datasets store images that way) before the network."""

    def __init__(self, shape, body: nn.Module) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(x.shape[0], *self.shape))


def build_logreg(input_shape, num_classes) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
