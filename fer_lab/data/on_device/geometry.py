"""Geometric albumentations transforms as per-sample affine matrices (see ops.Geometric).

Each `parse_*` takes a transform's `A.to_dict` arguments and returns its ops; the matrices map
input pixel centres to output ones, as cv2 does, and are resampled by warp.py. Matrices are built
from tensors already on the device, never from host values, so that building them does not sync.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .ops import Draw, Geometric, Op, Tensor, unsupported


def _affine(linear: Tensor, shift: Tensor) -> Tensor:
    """[B, 3, 3] from linear parts [B, 2, 2] and translations [B, 2]."""
    zero = torch.zeros_like(shift[:, :1, None])
    bottom = torch.cat([zero, zero, zero + 1], dim=2)  # no host-to-device copy: that would sync
    return torch.cat([torch.cat([linear, shift[:, :, None]], dim=2), bottom], dim=1)


def _diag(x: Tensor, y: Tensor) -> Tensor:
    return torch.diag_embed(torch.stack(torch.broadcast_tensors(x, y), dim=-1))


def _stack2x2(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    return torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2)


def _translation(tx: Tensor, ty: Tensor) -> Tensor:
    return _affine(torch.eye(2, device=tx.device).expand(len(tx), 2, 2), torch.stack([tx, ty], -1))


def invert(m: Tensor) -> Tensor:
    """Inverse of affine [B, 3, 3] in closed form (`linalg.inv` would sync the GPU to check)."""
    a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    linear = _stack2x2(d, -b, -c, a) / (a * d - b * c)[:, None, None]
    return _affine(linear, -(linear @ m[:, :2, 2:])[:, :, 0])


def _scale(d: Draw, bounds: tuple[float, float], balanced: bool) -> Tensor:
    lo, hi = bounds
    if balanced and lo < 1 < hi:  # albumentations picks the side below or above 1 by a coin
        return torch.where(d.rand() < 0.5, d.uniform(lo, 1.0), d.uniform(1.0, hi))
    return d.uniform(*bounds)


def _shift_scale_rotate(a: dict[str, Any]) -> dict[str, Any]:
    """ShiftScaleRotate's parameters as those of the Affine it is in 2.x (x and y scales are
    drawn independently there too)."""
    lo, hi = a["scale_limit"]
    return {
        **a,
        "translate_percent": {"x": a["shift_limit_x"], "y": a["shift_limit_y"]},
        "scale": {"x": (1 + lo, 1 + hi), "y": (1 + lo, 1 + hi)},
        "rotate": a["rotate_limit"],
        "shear": {"x": (0.0, 0.0), "y": (0.0, 0.0)},
        **dict(fit_output=False, keep_ratio=False, balanced_scale=False),
    }


def parse_affine(a: dict[str, Any]) -> list[Op]:
    """Affine, and ShiftScaleRotate as the Affine it is."""
    if a["__class_fullname__"] == "ShiftScaleRotate":
        a = _shift_scale_rotate(a)
    if a["fit_output"]:
        raise unsupported("Affine", "fit_output=True changes the image size")

    def matrix(d: Draw, h: int, w: int) -> Tensor:
        if a["translate_percent"] is not None:  # int() of a fraction of the size, as albumentations
            tx = torch.trunc(d.uniform(*a["translate_percent"]["x"]) * w)
            ty = torch.trunc(d.uniform(*a["translate_percent"]["y"]) * h)
        else:
            tx, ty = d.randint(*a["translate_px"]["x"]), d.randint(*a["translate_px"]["y"])
        shear_x = torch.tan(torch.deg2rad(-d.uniform(*a["shear"]["x"])))
        shear_y = torch.tan(torch.deg2rad(-d.uniform(*a["shear"]["y"])))
        sx = _scale(d, a["scale"]["x"], a["balanced_scale"])
        sy = sx if a["keep_ratio"] else _scale(d, a["scale"]["y"], a["balanced_scale"])
        angle = torch.deg2rad(d.uniform(*a["rotate"]))
        cos, sin, one = torch.cos(angle), torch.sin(angle), torch.ones_like(angle)
        linear = _stack2x2(one, shear_x, shear_y, one) @ _stack2x2(cos, sin, -sin, cos)
        linear = linear @ _diag(sx, sy)
        cx, cy = w / 2 - 0.5, h / 2 - 0.5  # about the centre, in pixel-centre coordinates
        moved = linear[:, :, 0] * cx + linear[:, :, 1] * cy
        shift = torch.stack([tx + cx, ty + cy], -1) - moved
        return _affine(linear, shift)

    # Any cv2 interpolation flag resamples bilinearly here (approximation for NEAREST/CUBIC).
    return [Geometric(a["p"], matrix, border=a["border_mode"], fill=a["fill"])]


def parse_flip(a: dict[str, Any]) -> list[Op]:
    """HorizontalFlip and VerticalFlip."""
    horizontal = a["__class_fullname__"] == "HorizontalFlip"

    def matrix(d: Draw, h: int, w: int) -> Tensor:
        sign, one = torch.full((d.n,), -1.0, device=d.device), torch.ones(d.n, device=d.device)
        linear = _diag(sign, one) if horizontal else _diag(one, sign)
        zero = torch.zeros_like(one)
        shift = torch.stack([zero + w - 1, zero] if horizontal else [zero, zero + h - 1], -1)
        return _affine(linear, shift)

    return [Geometric(a["p"], matrix)]


def _crop_resize(x0: Tensor, y0: Tensor, cw: Tensor, ch: Tensor, out: tuple[int, int]) -> Tensor:
    """Crop [y0, y0+ch) x [x0, x0+cw), then cv2-resize (pixel centres) to `out` (h, w)."""
    sx, sy = out[1] / cw + torch.zeros_like(x0), out[0] / ch + torch.zeros_like(y0)
    return _affine(_diag(sx, sy), torch.stack([(0.5 - x0) * sx - 0.5, (0.5 - y0) * sy - 0.5], -1))


def parse_random_resized_crop(a: dict[str, Any]) -> list[Op]:
    (s0, s1), (r0, r1), size = a["scale"], a["ratio"], tuple(a["size"])

    def matrix(d: Draw, h: int, w: int) -> Tensor:
        area = d.uniform(s0 * h * w, s1 * h * w)
        ratio = torch.exp(d.uniform(math.log(r0), math.log(r1)))
        # One draw clamped to the image, where albumentations retries 10 times then centre-crops.
        cw = torch.round(torch.sqrt(area * ratio)).clamp(1, w)
        ch = torch.round(torch.sqrt(area / ratio)).clamp(1, h)
        x0, y0 = torch.floor((w - cw + 1) * d.rand()), torch.floor((h - ch + 1) * d.rand())
        # The outer ring samples up to half a pixel past the crop, where cv2 repeats its edge.
        return _crop_resize(x0, y0, cw, ch, size)

    return [Geometric(a["p"], matrix, size=lambda h, w: size)]


def _pad(a: dict[str, Any], min_h: int, min_w: int, position: str) -> Geometric:
    """PadIfNeeded to at least (min_h, min_w), placed by `position`."""

    def offset(d: Draw, pad: int, side: str, start: str, end: str) -> Tensor:
        if position == "random":
            return d.randint(0, pad)
        before = {start: 0, end: pad}.get(side, int(pad / 2))
        return torch.full((d.n,), float(before), device=d.device)

    def matrix(d: Draw, h: int, w: int) -> Tensor:
        vertical, _, horizontal = position.partition("_")
        left = offset(d, max(min_w - w, 0), horizontal or vertical, "left", "right")
        top = offset(d, max(min_h - h, 0), vertical, "top", "bottom")
        return _translation(left, top)

    size = lambda h, w: (max(h, min_h), max(w, min_w))  # noqa: E731
    return Geometric(a["p"], matrix, size=size, border=a["border_mode"], fill=a["fill"])


def parse_pad(a: dict[str, Any]) -> list[Op]:
    if a["pad_height_divisor"] is not None or a["pad_width_divisor"] is not None:
        raise unsupported("PadIfNeeded", "pad_*_divisor")
    return [_pad(a, a["min_height"], a["min_width"], a["position"])]


def parse_random_crop(a: dict[str, Any]) -> list[Op]:
    """RandomCrop, after the PadIfNeeded it runs first when `pad_if_needed`."""
    ch, cw = a["height"], a["width"]

    def size(h: int, w: int) -> tuple[int, int]:
        if ch > h or cw > w:
            raise ValueError(f"RandomCrop {ch}x{cw} is larger than its {h}x{w} input")
        return ch, cw

    def matrix(d: Draw, h: int, w: int) -> Tensor:
        x0, y0 = torch.floor((w - cw + 1) * d.rand()), torch.floor((h - ch + 1) * d.rand())
        return _translation(-x0, -y0)

    pad = [_pad(a, ch, cw, a["pad_position"])] if a["pad_if_needed"] else []
    return [*pad, Geometric(a["p"], matrix, size=size)]
