"""fer_lab's own recipe network: a VGG-style net with batch norm for 48x48 faces.

Four stages of two 3x3 conv-BN-ReLU layers and a 2x2 max-pool (64-128-256-512 channels, the
layout of the VGG variants that lead FER2013 from scratch), then global average pooling, so
the head stays small (4,821,191 parameters for 7 classes) and any input size works.

Three recipe levers for sweeps, off by default (the default network, and so its checkpoints'
state_dict keys, stay as they were): `width` scales every stage's channels, `depth` repeats
each stage's conv pair, `residual` adds a shortcut around each pair (ResNet's basic block,
with a 1x1 projection where the channels change).
"""

from collections.abc import Sequence

import torch
from torch import nn

from fer_lab.models.base import FERNet


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class ResidualPair(nn.Module):
    """Two conv-BN layers with a shortcut added before the last ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _stage(in_channels: int, out_channels: int, depth: int, residual: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for pair in range(depth):
        first = in_channels if pair == 0 else out_channels
        if residual:
            layers.append(ResidualPair(first, out_channels))
        else:
            layers += _conv_bn_relu(first, out_channels) + _conv_bn_relu(out_channels, out_channels)
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class FERVGG(FERNet):
    """VGG-style stages, global average pooling, dropout, one hidden layer, then the scores."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        input_size: int = 48,
        channels: Sequence[int] = (64, 128, 256, 512),
        hidden: int = 256,
        dropout: float = 0.4,
        width: float = 1.0,
        depth: int = 1,
        residual: bool = False,
    ) -> None:
        super().__init__(num_classes, in_channels, input_size)
        if not width > 0:
            raise ValueError(f"model.width scales the channels and must be > 0, got {width}")
        if not (isinstance(depth, int) and depth >= 1):
            raise ValueError(f"model.depth is conv pairs per stage, an integer >= 1, got {depth}")
        widths = [in_channels, *(max(1, round(c * width)) for c in channels)]
        self.features = nn.Sequential(
            *(_stage(widths[i], widths[i + 1], depth, residual) for i in range(len(channels)))
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(widths[-1], hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
