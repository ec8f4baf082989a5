"""Daniel Nouri's facial-keypoint CNN (seed 004), used as an expression classifier."""

import torch
from torch import nn

from fer_lab.models.base import FERNet, glorot_init


class NouriNet(FERNet):
    """conv32 3x3 - pool - conv64 2x2 - pool - conv128 2x2 - pool - dense - dense - output.

    Lasagne defaults: valid convolutions, ReLU, floor pooling, Glorot-uniform weights, zero
    biases. The seed omits dropout "for clarity"; `dropout` adds it after each hidden layer.
    """

    def __init__(
        self,
        num_classes: int,
        hidden: int = 1000,
        dropout: float = 0.0,
        in_channels: int = 1,
        input_size: int = 96,
    ) -> None:
        super().__init__(num_classes, in_channels, input_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(self.feature_size(self.features), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        glorot_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
