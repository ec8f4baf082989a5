"""ConvNet0..ConvNet5 of seed 003 (PyTorch course assignment on FER2013).

The seed's final `nn.Softmax` is applied by the training module, so `forward` returns the
scores just before it; with `loss=mse_onehot` the recipe is the seed's MSE on softmax.
"""

from collections.abc import Sequence

import torch
from torch import nn

from fer_lab.models.base import FERNet


class ConvNet0(FERNet):
    """The seed's small set-up network: three strided/plain convs and one linear layer."""

    def __init__(self, num_classes: int, in_channels: int = 1, input_size: int = 48) -> None:
        super().__init__(num_classes, in_channels, input_size)
        self.layer1 = nn.Sequential(nn.Conv2d(in_channels, 8, 4, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(12, 16, 4, stride=2, padding=1), nn.ReLU())
        features = nn.Sequential(self.layer1, self.layer2, self.layer3)
        self.fc = nn.Linear(self.feature_size(features), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.flatten(1))


class SeedConvNet(FERNet):
    """ConvNet1..5: three conv blocks and two fully connected blocks, as the seed gives them.

    Conv block: Conv2d 3x3 pad 1, BatchNorm2d, ReLU, Dropout2d, MaxPool2d 2.
    FC block: Linear, BatchNorm1d, Dropout, ReLU (the last one too, before the softmax).
    """

    def __init__(
        self,
        num_classes: int,
        channels: Sequence[int],
        hidden: int,
        dropout: float,
        in_channels: int = 1,
        input_size: int = 48,
    ) -> None:
        super().__init__(num_classes, in_channels, input_size)
        if len(channels) != 3:
            raise ValueError(f"SeedConvNet has three conv layers, got channels={list(channels)}")
        widths = [in_channels, *channels]
        self.layer1, self.layer2, self.layer3 = (
            nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], 3, stride=1, padding=1),
                nn.BatchNorm2d(widths[i + 1]),
                nn.ReLU(),
                nn.Dropout2d(dropout),
                nn.MaxPool2d(2, stride=2),
            )
            for i in range(3)
        )
        features = nn.Sequential(self.layer1, self.layer2, self.layer3)
        self.fc1 = self._fc_block(self.feature_size(features), hidden, dropout)
        self.fc2 = self._fc_block(hidden, num_classes, dropout)

    @staticmethod
    def _fc_block(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.Dropout(dropout), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc2(self.fc1(x.flatten(1)))
