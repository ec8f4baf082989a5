"""Reading instantiated albumentations transforms into batch ops, and preprocess into a normaliser.

Transforms are read through their public serialisation (`A.to_dict`), so the batch path sees
exactly the arguments the per-sample path runs with. `PARSERS` lists every transform mapped;
anything else, or a parameter a parser cannot honour, raises `ops.unsupported`'s ValueError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import torch

from . import geometry, pixel
from .ops import BORDERS, Geometric, Op, Pixel, Tensor, channel_values, unsupported

PARSERS: dict[str, Callable[[dict[str, Any]], list[Op]]] = {
    "Affine": geometry.parse_affine,
    "ShiftScaleRotate": geometry.parse_affine,
    "HorizontalFlip": geometry.parse_flip,
    "VerticalFlip": geometry.parse_flip,
    "RandomResizedCrop": geometry.parse_random_resized_crop,
    "RandomCrop": geometry.parse_random_crop,
    "PadIfNeeded": geometry.parse_pad,
    "RandomBrightnessContrast": pixel.parse_brightness_contrast,
    "CoarseDropout": pixel.parse_coarse_dropout,
    "Erasing": pixel.parse_erasing,
}

# What a BatchTransform runs in order: a pixel op, or consecutive geometric ops with their input
# sizes (h, w), resampled together.
Step = Pixel | list[tuple[Geometric, tuple[int, int]]]


def _serialise(transform: A.BasicTransform) -> dict[str, Any]:
    try:
        return A.to_dict(transform)["transform"]
    except Exception as error:  # e.g. Lambda, which albumentations cannot serialise
        raise unsupported(type(transform).__name__) from error


def parse(augmentation: Sequence[A.BasicTransform]) -> list[tuple[str, Op]]:
    """(transform name, op) pairs, in order, leaving out ops with p=0."""
    ops = []
    for transform in augmentation:
        a = _serialise(transform)
        name = a["__class_fullname__"]
        if name not in PARSERS:
            raise unsupported(name)
        for op in PARSERS[name](a):
            if isinstance(op, Geometric) and op.border not in BORDERS:
                raise unsupported(name, f"border_mode={op.border}")
            if op.p > 0:  # p=0 never runs
                ops.append((name, op))
    return ops


def plan(ops: list[tuple[str, Op]], image_size: int) -> list[Step]:
    """Group consecutive geometric ops (one resampling each group), checking the image sizes."""
    steps: list[Step] = []
    frame = (image_size, image_size)
    for name, op in ops:
        if isinstance(op, Pixel):
            steps.append(op)
            continue
        out = op.size(*frame)
        if out != frame and op.p < 1:
            raise ValueError(f"{name} changes the image size with p={op.p}: sizes would vary")
        if not steps or not isinstance(steps[-1], list):
            steps.append([])
        steps[-1].append((op, frame))
        frame = out
    if frame != (image_size, image_size):
        raise ValueError(f"the augmentation outputs {frame} images, not image_size={image_size}")
    return steps


def _per_channel(values: Any, x: Tensor) -> float | Tensor:
    """Mean/std values for `x`'s channels as albucore picks them (the first for 1 channel)."""
    if not isinstance(values, int | float):
        values, channels = list(values), x.shape[1]
        values = values[:1] if len(values) == 1 or len(values) < channels else values[:channels]
    return channel_values(values, x)


def normaliser(preprocess: A.BasicTransform) -> Callable[[Tensor], Tensor]:
    """conf/preprocess (Normalize, in any `normalization` mode, or ToFloat) as a function of
    float [B, C, H, W] in 0..255."""
    a = _serialise(preprocess)
    name, mode = a["__class_fullname__"], a.get("normalization")
    if a["p"] < 1:
        raise unsupported(name, "p < 1")
    if name == "ToFloat":
        return lambda x: x / (a["max_value"] or 255.0)
    if name != "Normalize":
        raise unsupported(name)
    if mode == "standard":
        scale = a["max_pixel_value"]
        return lambda x: (
            (x - _per_channel(a["mean"], x) * scale) / (_per_channel(a["std"], x) * scale)
        )
    dims = (2, 3) if mode.endswith("_per_channel") else (1, 2, 3)  # per image or per channel

    def per_image(x: Tensor) -> Tensor:
        if mode.startswith("min_max"):
            low, high = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
            return ((x - low) / (high - low + 1e-4)).clamp(-20, 20)
        std, mean = torch.std_mean(x, dims, correction=0, keepdim=True)
        return ((x - mean) / (std + 1e-4)).clamp(-20, 20)

    return per_image
