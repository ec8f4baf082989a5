"""fer_lab's own recipe network: a VGG-style net with batch norm for 48x48 faces.

Four stages of two 3x3 conv-BN-ReLU layers and a 2x2 max-pool (64-128-256-512 channels, the
layout of the VGG variants that lead FER2013 from scratch), then global average pooling, so
the head stays small (4,821,191 parameters for 7 classes) and any input size works.
"""

from collections.abc import Sequence

import torch
from torch import nn

from fer_lab.models.base import FERNet


def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(2):
        conv = nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1)
        layers += [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
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
    ) -> None:
        super().__init__(num_classes, in_channels, input_size)
        widths = [in_channels, *channels]
        self.features = nn.Sequential(
            *(_stage(widths[i], widths[i + 1]) for i in range(len(channels)))
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
