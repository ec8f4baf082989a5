"""Pixel albumentations transforms as batch ops on float [B, C, H, W] in 0..255 (ops.Pixel).

Each `parse_*` takes a transform's `A.to_dict` arguments and returns its ops. Values stay on the
0..255 scale, as they do on uint8 images in albumentations, until the normaliser runs.
"""

from __future__ import annotations

from typing import Any

import torch

from .ops import Draw, Op, Pixel, Tensor, channel_values, unsupported


def _numeric_fill(a: dict[str, Any]) -> Any:
    if isinstance(a["fill"], str):
        raise unsupported(a["__class_fullname__"], f"fill={a['fill']!r}")
    return a["fill"]


def _holes(x: Tensor, top: Tensor, left: Tensor, hh: Tensor, ww: Tensor, fill: Any, keep: Tensor):
    """`x` with the rectangles [top, top+hh) x [left, left+ww) ([B, K] each) filled where `keep`."""
    rows = torch.arange(x.shape[-2], device=x.device)[:, None]
    cols = torch.arange(x.shape[-1], device=x.device)[None, :]

    def inside(v: Tensor, start: Tensor, length: Tensor) -> Tensor:
        return (v >= start[..., None, None]) & (v < (start + length)[..., None, None])

    mask = inside(rows, top, hh) & inside(cols, left, ww) & keep[..., None, None]
    return torch.where(mask.any(1, keepdim=True), channel_values(fill, x), x)


def parse_coarse_dropout(a: dict[str, Any]) -> list[Op]:
    fill, (n0, n1) = _numeric_fill(a), a["num_holes_range"]
    hr, wr = a["hole_height_range"], a["hole_width_range"]

    def apply(x: Tensor, d: Draw) -> Tensor:
        h, w = x.shape[-2:]
        if hr[1] >= 1:  # pixels (albumentations decides by the height range alone)
            hh = d.randint(int(hr[0]), int(min(hr[1], h)), n1)
            ww = d.randint(int(wr[0]), int(min(wr[1], w)), n1)
        else:  # fractions of the size, truncated
            hh, ww = torch.trunc(h * d.uniform(*hr, n1)), torch.trunc(w * d.uniform(*wr, n1))
        top, left = d.randint(0, h - hh, n1), d.randint(0, w - ww, n1)
        keep = torch.arange(n1, device=d.device) < d.randint(n0, n1)[:, None]
        return _holes(x, top, left, hh, ww, fill, keep)

    return [Pixel(a["p"], apply)]


def parse_erasing(a: dict[str, Any]) -> list[Op]:
    fill, (s0, s1), (r0, r1) = _numeric_fill(a), a["scale"], a["ratio"]

    def apply(x: Tensor, d: Draw) -> Tensor:
        h, w = x.shape[-2:]
        low, high = s0 * h * w, min(s1 * h * w, r0 * h * h, w * w / r1)  # areas some ratio fits
        area = d.uniform(low, high)
        ratio_low, ratio_high = (area / (h * h)).clamp(min=r0), (w * w / area).clamp(max=r1)
        ratio = d.uniform(ratio_low, ratio_high)
        hh, ww = torch.round(torch.sqrt(area / ratio)), torch.round(torch.sqrt(area * ratio))
        top, left = d.randint(0, h - hh), d.randint(0, w - ww)
        keep = (ratio_low <= ratio_high) & (low <= high)
        return _holes(x, *(v[:, None] for v in (top, left, hh, ww)), fill, keep[:, None])

    return [Pixel(a["p"], apply)]


def parse_brightness_contrast(a: dict[str, Any]) -> list[Op]:
    """RandomBrightnessContrast."""

    def apply(x: Tensor, d: Draw) -> Tensor:
        alpha = 1 + d.uniform(*a["contrast_limit"])  # 2.x: alpha * x + beta, no mean involved
        beta = d.uniform(*a["brightness_limit"])
        beta = beta * 255 if a["brightness_by_max"] else beta * x.mean((1, 2, 3))
        if a["ensure_safe_range"]:
            beta = torch.where(alpha > 0, beta.clamp(0, 255), beta.clamp(max=255))
            safe = torch.where(alpha > 0, (255 - beta) / 255, -beta / 255)
            alpha = torch.where(alpha > 0, torch.minimum(alpha, safe), torch.maximum(alpha, safe))
        # albumentations' uint8 lookup table clips to 0..255 (and rounds, which is skipped here).
        return (alpha.view(-1, 1, 1, 1) * x + beta.view(-1, 1, 1, 1)).clamp(0, 255)

    return [Pixel(a["p"], apply)]
