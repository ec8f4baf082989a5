"""Seed 002's Keras transfer model: VGG16 features, last block trainable, a new dense head."""

from pathlib import Path

import torch
from torch import nn

from fer_lab.core.errors import ConfigError
from fer_lab.models.base import FERNet

# torchvision's vgg16.features: blocks end at these indices (after each max-pool).
_BLOCK_ENDS = (5, 10, 17, 24, 31)


class VGG16Transfer(FERNet):
    """VGG16 convolutional base, Flatten, Dense 1024 + ReLU, Dropout, classifier.

    The first `5 - trainable_blocks` conv blocks are frozen (the seed trains block 5 only).
    Weights: `weights_path` (a torchvision VGG16 state dict on disk) if given, else ImageNet
    through torchvision's weights API when `pretrained`, else random.
    """

    def __init__(
        self,
        num_classes: int,
        pretrained: bool = True,
        weights_path: str | None = None,
        trainable_blocks: int = 1,
        hidden: int = 1024,
        dropout: float = 0.5,
        in_channels: int = 3,
        input_size: int = 224,
    ) -> None:
        super().__init__(num_classes, in_channels, input_size)
        if in_channels != 3:
            raise ConfigError(
                f"vgg16_transfer takes RGB input (model.in_channels=3), got {in_channels}; "
                "grayscale datasets are converted to 3 channels by the data pipeline"
            )
        if not 0 <= trainable_blocks <= 5:
            raise ConfigError(f"model.trainable_blocks must be in 0..5, got {trainable_blocks}")
        self.features = _load_vgg16_features(pretrained, weights_path)
        frozen_until = _BLOCK_ENDS[4 - trainable_blocks] if trainable_blocks < 5 else 0
        for param in self.features[:frozen_until].parameters():
            param.requires_grad = False
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.feature_size(self.features), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _load_vgg16_features(pretrained: bool, weights_path: str | None) -> nn.Sequential:
    # torchvision only here: it costs ~2 s to import, which no other model needs.
    from torchvision.models import VGG16_Weights, vgg16

    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"model.weights_path={weights_path}: no such file. Point it at a torchvision "
                "VGG16 state dict (vgg16-397923af.pth) or set model.pretrained=false."
            )
        network = vgg16(weights=None)
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return network.features
    if not pretrained:
        return vgg16(weights=None).features
    try:
        return vgg16(weights=VGG16_Weights.IMAGENET1K_V1).features
    except Exception as error:  # torchvision raises URLError, OSError, RuntimeError...
        raise ConfigError(
            f"vgg16_transfer could not load the ImageNet weights ({error}). Offline? Put "
            f"{VGG16_Weights.IMAGENET1K_V1.url.rsplit('/', 1)[-1]} in torch's hub cache "
            f"({torch.hub.get_dir()}/checkpoints), pass model.weights_path=/path/to/it, "
            "or train from scratch with model.pretrained=false."
        ) from error
