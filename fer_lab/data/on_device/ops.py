"""The two kinds of batch op that albumentations transforms become, and what they share.

A geometric op gives one affine matrix per sample; consecutive ones are resampled together
(warp.py). A pixel op maps the float batch [B, C, H, W], still on the 0..255 scale, to a new one.
As in albumentations, every sample draws its own parameters (`Draw`) and its own `p`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Tensor = torch.Tensor
CONSTANT, REPLICATE, REFLECT, REFLECT_101 = 0, 1, 2, 4  # cv2.BORDER_* values
BORDERS = (CONSTANT, REPLICATE, REFLECT, REFLECT_101)  # not BORDER_WRAP


class Draw:
    """Per-sample random numbers for a batch: columns of one table [n, columns] of uniforms,
    drawn in a single call, handed out in the order the ops ask for them.

    Row i belongs to image i alone, so an image's augmentation is the same whatever batch or
    chunk it is transformed in. `Draw.counting` hands out stand-in values and only counts the
    columns, to size the table before any is drawn.
    """

    def __init__(self, table: Tensor) -> None:
        self.table, self.used = table, 0
        self.n, self.device = table.shape[0], table.device

    @classmethod
    def counting(cls, device: torch.device) -> Draw:
        return cls(torch.full((1, 0), 0.5, device=device))

    def rand(self, *shape: int) -> Tensor:
        width = math.prod(shape)
        start, self.used = self.used, self.used + width
        if self.table.shape[1] == 0:  # counting
            return torch.full((self.n, *shape), 0.5, device=self.device)
        return self.table[:, start : self.used].view(self.n, *shape)

    def uniform(self, lo: Any, hi: Any, *shape: int) -> Tensor:
        return lo + (hi - lo) * self.rand(*shape)

    def randint(self, lo: Any, hi: Any, *shape: int) -> Tensor:
        """Integers in [lo, hi], both included (as `random.randint`), as floats."""
        value = lo + torch.floor(self.rand(*shape) * (hi - lo + 1))
        return torch.minimum(value, hi) if isinstance(hi, Tensor) else value.clamp(max=hi)


@dataclass
class Geometric:
    """A geometric op: per-sample forward matrices [B, 3, 3] mapping input pixel centres to output
    ones (the cv2 convention), the output size, and what its input frame holds outside."""

    p: float
    matrix: Callable[[Draw, int, int], Tensor]
    size: Callable[[int, int], tuple[int, int]] = lambda h, w: (h, w)
    border: int = REPLICATE  # crops and flips never sample outside; resizes replicate edges
    fill: Any = 0.0


@dataclass
class Pixel:
    """A pixel op on float [B, C, H, W] in 0..255."""

    p: float
    apply: Callable[[Tensor, Draw], Tensor]


Op = Geometric | Pixel


def unsupported(name: str, why: str = "") -> ValueError:
    """The error for a transform (or parameter) the batch path cannot map."""
    return ValueError(
        f"{name}{f' ({why})' if why else ''} is not supported by the batch (on-device) "
        "augmentation; use data.pipeline=per_sample"
    )


def channel_values(values: Any, x: Tensor) -> float | Tensor:
    """A number, or per-channel values [C, 1, 1] made on `x`'s device without a host copy."""
    if isinstance(values, int | float):
        return float(values)
    return torch.stack([x.new_full((), float(v)) for v in values]).view(-1, 1, 1)
