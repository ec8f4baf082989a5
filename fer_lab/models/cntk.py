"""The CNTK networks of seed 000 (happy vs sad): the simple CNN and Dachapally's CNN.

One class covers all three: they differ only in filters, kernels, strides, pooling and the
dense head, which the configs `cntk_simple`, `dachapally` and `dachapally_wide` set.
"""

from collections.abc import Sequence

import torch
from torch import nn

from fer_lab.models.base import FERNet, glorot_init
from fer_lab.models.layers import SamePool2d


class CNTKNet(FERNet):
    """Conv (same padding, ReLU) + stride-1 same pooling blocks, then ReLU dense layers.

    Mirrors `C.layers.Sequential` under `default_options(init=glorot_uniform, activation=relu)`:
    every conv and hidden dense layer has a ReLU, the output layer none, dropout after each
    hidden dense layer.
    """

    def __init__(
        self,
        num_classes: int,
        filters: Sequence[int],
        kernels: Sequence[int],
        strides: Sequence[int],
        pools: Sequence[str],
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        in_channels: int = 1,
        input_size: int = 48,
    ) -> None:
        super().__init__(num_classes, in_channels, input_size)
        if not len(filters) == len(kernels) == len(strides) == len(pools):
            raise ValueError("filters, kernels, strides and pools must have the same length")
        blocks: list[nn.Module] = []
        channels = in_channels
        for width, kernel, stride, pool in zip(filters, kernels, strides, pools, strict=True):
            blocks += [
                nn.Conv2d(channels, width, kernel, stride=stride, padding=kernel // 2),
                nn.ReLU(),
                SamePool2d(pool),
            ]
            channels = width
        self.features = nn.Sequential(*blocks, nn.Flatten())
        head: list[nn.Module] = []
        size = self.feature_size(self.features)
        for units in hidden:
            head += [nn.Linear(size, units), nn.ReLU(), nn.Dropout(dropout)]
            size = units
        self.classifier = nn.Sequential(*head, nn.Linear(size, num_classes))
        glorot_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
