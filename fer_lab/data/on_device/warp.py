"""Resampling a batch through a run of consecutive geometric ops, with one `grid_sample`.

Walking back from the output grid, each op's inverse matrix maps the sampling points into its
input frame, where its cv2 border mode decides what lies outside: points are clamped (REPLICATE)
or mirrored (REFLECT, REFLECT_101) into the image, or (CONSTANT) the op's fill is blended in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import invert
from .ops import CONSTANT, REFLECT, REFLECT_101, Geometric, Tensor, channel_values


def _fold(v: Tensor, n: int, border: int) -> Tensor:
    """Coordinates along an axis of `n` pixels brought inside it, as `border` extends an image."""
    if border == REFLECT:  # fedcba|abcdef: mirrored about the outer pixel edges
        v = (v + 0.5).remainder(2 * n)
        v = torch.where(v > n, 2 * n - v, v) - 0.5
    elif border == REFLECT_101 and n > 1:  # gfedcb|abcdefgh: about the outer pixel centres
        v = v.remainder(2 * n - 2)
        v = torch.where(v > n - 1, 2 * n - 2 - v, v)
    return v.clamp(0, n - 1)


def _inside(v: Tensor, n: int) -> Tensor:
    """The image's weight (against a constant border) in a bilinear sample at `v`."""
    return (v + 1).clamp(0, 1) * (n - v).clamp(0, 1)


def warp(x: Tensor, stages: list[tuple[Geometric, Tensor, tuple[int, int]]]) -> Tensor:
    """Resample `x` once through geometric ops applied in order, as if each resampled its own
    output. `stages` holds (op, its per-sample matrices [B, 3, 3], its input size (h, w)).
    One bilinear resampling instead of one per op is sharper, an approximation that shows only
    where a later op moves the edge of an earlier op's constant fill (a band a pixel wide)."""
    op, _, frame = stages[-1]
    out = op.size(*frame)
    b, device = x.shape[0], x.device
    ys, xs = torch.meshgrid(
        torch.arange(out[0], device=device), torch.arange(out[1], device=device), indexing="ij"
    )
    points = torch.stack([xs, ys], -1).reshape(1, -1, 2).float().expand(b, -1, -1)
    fills = []
    for op, matrix, (h, w) in reversed(stages):
        inverse = invert(matrix)
        points = points @ inverse[:, :2, :2].transpose(1, 2) + inverse[:, None, :2, 2]
        px, py = points.unbind(-1)
        if op.border == CONSTANT:
            fills.append((_inside(px, w) * _inside(py, h), op.fill))
        points = torch.stack([_fold(px, w, op.border), _fold(py, h, op.border)], -1)
    px, py = points.unbind(-1)  # to grid_sample's [-1, 1] (align_corners=False)
    grid = torch.stack([(2 * px + 1) / x.shape[-1] - 1, (2 * py + 1) / x.shape[-2] - 1], -1)
    grid = grid.view(b, *out, 2)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    for weight, fill in reversed(fills):  # from the first op's border to the last one's
        weight = weight.view(b, 1, *out)
        y = weight * y + (1 - weight) * channel_values(fill, y)
    return y
