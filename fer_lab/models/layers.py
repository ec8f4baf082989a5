"""Layers the seed architectures need that torch.nn lacks."""

import torch
from torch import nn


class SamePool2d(nn.Module):
    """2x2 pooling with stride 1 that keeps the spatial size, as CNTK's `pad=True`.

    The missing row and column are padded at the bottom/right; padded cells never win a max
    and are left out of an average (CNTK's default), so border values are not diluted.
    """

    def __init__(self, mode: str, kernel_size: int = 2) -> None:
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"SamePool2d mode must be 'max' or 'avg', got {mode!r}")
        self.mode = mode
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        pad = k - 1
        if self.mode == "max":
            x = nn.functional.pad(x, (0, pad, 0, pad), value=float("-inf"))
            return nn.functional.max_pool2d(x, k, stride=1)
        ones = torch.ones_like(x[:, :1])
        total = nn.functional.avg_pool2d(nn.functional.pad(x, (0, pad, 0, pad)), k, stride=1)
        count = nn.functional.avg_pool2d(nn.functional.pad(ones, (0, pad, 0, pad)), k, stride=1)
        return total / count

    def extra_repr(self) -> str:
        return f"mode={self.mode}, kernel_size={self.kernel_size}, stride=1, padding=same"
