"""The TensorFlow emotion CNN of seed 001, with its L2 term and initialisation."""

import torch
from torch import nn

from fer_lab.models.base import FERNet


class TFEmotionCNN(FERNet):
    """conv5x5x32 - maxpool - conv3x3x64 - maxpool - fc256 - dropout - fc.

    Seed 001 adds `l2 * tf.nn.l2_loss` (half the sum of squares) of the two conv layers'
    weights and biases to the loss; its fully connected layers are not regularised.
    """

    def __init__(
        self,
        num_classes: int,
        dropout: float = 0.5,
        l2: float = 1e-2,
        in_channels: int = 1,
        input_size: int = 48,
    ) -> None:
        super().__init__(num_classes, in_channels, input_size)
        self.l2 = l2
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding="same")
        self.conv2 = nn.Conv2d(32, 64, 3, padding="same")
        # ceil_mode reproduces TF's padding="SAME" pooling for odd sizes.
        self.features = nn.Sequential(
            self.conv1,
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            self.conv2,
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(self.feature_size(self.features), 256),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def regularization_loss(self) -> torch.Tensor:
        params = [self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias]
        return self.l2 * sum(0.5 * p.pow(2).sum() for p in params)
