"""Vision models written in torch alone (torchvision does not install beside the CPU torch wheel here),
plus any ``transformers`` vision model built from a config.

Each takes normalised float images ``[N, C, H, W]`` (the :class:`~aimass.models.zoo.ZooModel` wrapper
turns the raw uint8 images into these) and returns logits ``[N, num_outputs]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aimass.models.zoo import AsImage

__all__ = ["ResNet", "ViT", "build_hf_vision", "build_resnet", "build_vit"]


def _chw(input_shape) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise TypeError(f"needs [C,H,W] images, got input shape {list(input_shape)}")
    return shape  # type: ignore[return-value]


class _Block(nn.Module):
    """A basic residual block (two 3x3 convolutions), downsampling with a 1x1 projection when needed."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.proj is None else self.proj(x)))


class ResNet(nn.Module):
    """A small ResNet: a 3x3 stem, stages of basic blocks (stride 2 between stages), global pooling, a linear head."""

    def __init__(self, channels: int, num_outputs: int, widths=(16, 32, 64), blocks=(1, 1, 1), dropout: float = 0.0) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise TypeError(f"widths and blocks must have the same length, got {list(widths)} and {list(blocks)}")
        self.stem = nn.Sequential(nn.Conv2d(channels, int(widths[0]), 3, 1, 1, bias=False), nn.BatchNorm2d(int(widths[0])), nn.ReLU())
        layers, cin = [], int(widths[0])
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(int(n)):
                layers.append(_Block(cin, int(w), 2 if (i > 0 and j == 0) else 1))
                cin = int(w)
        self.blocks = nn.Sequential(*layers)
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(cin, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(self.dropout(x.mean((2, 3))))


class _EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(int(dim * mlp_ratio), dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small Vision Transformer: patch embedding, a class token, pre-norm encoder blocks, a linear head."""

    def __init__(self, shape: tuple[int, int, int], num_outputs: int, patch: int = 4, dim: int = 64, depth: int = 4,
                 heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        c, h, w = shape
        if h % patch or w % patch:
            raise TypeError(f"image size {h}x{w} is not a multiple of patch {patch}")
        if dim % heads:
            raise TypeError(f"dim {dim} is not a multiple of heads {heads}")
        n = (h // patch) * (w // patch)
        self.patch = nn.Conv2d(c, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([_EncoderLayer(dim, heads, mlp_ratio, dropout) for _ in range(int(depth))])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x[:, 0]))


def build_resnet(input_shape, num_outputs, widths=(16, 32, 64), blocks=(1, 1, 1), dropout=0.0) -> nn.Module:
    c, _, _ = _chw(input_shape)
    return AsImage(_chw(input_shape), ResNet(c, num_outputs, widths, blocks, dropout))


def build_vit(input_shape, num_outputs, patch=4, dim=64, depth=4, heads=4, mlpRatio=2.0, dropout=0.0) -> nn.Module:
    shape = _chw(input_shape)
    return AsImage(shape, ViT(shape, num_outputs, int(patch), int(dim), int(depth), int(heads), float(mlpRatio), float(dropout)))


class _HFVision(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def build_hf_vision(input_shape, num_outputs, config: dict[str, Any] | None = None) -> nn.Module:
    """A ``transformers`` image-classification model from a config dict (random weights; ``init.from`` loads weights)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    shape = _chw(input_shape)
    cfg = dict(config or {})
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise TypeError("hf-vision needs modelArgs.config.model_type (e.g. vit, resnet, convnext)")
    cfg.setdefault("num_channels", shape[0])
    if model_type in ("vit", "deit", "beit"):
        cfg.setdefault("image_size", shape[1])
    hf_cfg = AutoConfig.for_model(model_type, num_labels=num_outputs, **cfg)
    return AsImage(shape, _HFVision(AutoModelForImageClassification.from_config(hf_cfg)))


