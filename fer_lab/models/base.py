"""What every fer_lab network shares, so the training code treats them alike."""

import torch
from torch import nn

from fer_lab.core.errors import ConfigError


class FERNet(nn.Module):
    """A classifier from `in_channels x input_size x input_size` images to `num_classes` scores.

    `forward` returns unnormalised scores (logits); the training module applies the softmax,
    so every loss in `conf/loss/` works with every network.
    """

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = input_size

    def regularization_loss(self) -> torch.Tensor:
        """Extra loss term a recipe adds to the data loss (seed 001's L2); zero by default."""
        return torch.zeros((), device=next(self.parameters()).device)

    def feature_size(self, features: nn.Module) -> int:
        """Number of values `features` yields for one input image."""
        with torch.no_grad():
            probe = torch.zeros(1, self.in_channels, self.input_size, self.input_size)
            return features(probe).numel()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def glorot_init(model: nn.Module) -> None:
    """Glorot-uniform weights and zero biases (the CNTK and Lasagne defaults)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def check_forward(net: nn.Module, channels: int, size: int, num_classes: int, model: str) -> None:
    """One blank image through the network: a size the architecture cannot take fails here,
    with the key to change, instead of deep inside the first training step."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            logits = net(torch.zeros(1, channels, size, size))
    except RuntimeError as error:
        raise ConfigError(
            f"model {model} cannot take {channels}x{size}x{size} images (model.input_size="
            f"{size}, model.in_channels={channels}): {str(error).splitlines()[0]}"
        ) from error
    finally:
        net.train(was_training)
    if tuple(logits.shape) != (1, num_classes):
        raise ConfigError(
            f"model {model} returns {tuple(logits.shape)} for one image; expected (1, "
            f"{num_classes}) for dataset.classes"
        )
