"""Augmentation and normalisation of a whole uint8 batch with torch ops, on the batch's device.

Why this exists: the on-device data path (fer_lab.data.on_device.batches) keeps a split as one uint8
tensor on the GPU and augments each batch there, where the per-image albumentations pipeline of
fer_lab.data.transforms cannot run. So that both paths train on the same recipe, `BatchTransform`
is built from the SAME instantiated albumentations transforms (conf/augmentation,
conf/preprocess) and maps each to a vectorised batch op with albumentations 2.x semantics: every
sample draws its own parameters and its own `p`. Consecutive geometric ops are resampled once
(one `grid_sample`); pixel values stay on the 0..255 scale until normalisation, as they do on
uint8 images in albumentations.

Mapped: HorizontalFlip, VerticalFlip, Affine, ShiftScaleRotate, RandomResizedCrop, RandomCrop,
PadIfNeeded, RandomBrightnessContrast, CoarseDropout, Erasing; preprocess Normalize (all its
`normalization` modes) and ToFloat. Anything else raises ValueError (see `BatchTransform.supports`).

Modules: parse (albumentations -> ops, the normaliser), ops (the op types, per-sample draws),
geometry (affine matrices of geometric transforms), warp (their resampling), pixel (pixel ops).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import albumentations as A
import torch
import torch.nn.functional as F

from .ops import Draw, Geometric, Pixel, Tensor
from .parse import Step, normaliser, parse, plan
from .warp import warp

__all__ = ["BatchTransform"]

_SALT = 0x5DEECE66D  # so a generator seeded like the shuffling one does not replay its stream


class BatchTransform:
    """Resize, [augment,] normalise a uint8 batch [B, C, H, W] on its own device: the batch
    counterpart of fer_lab.data.transforms.build_transforms' (train, eval) pipelines, built from
    the same albumentations objects so that configs need no second syntax."""

    def __init__(
        self, steps: list[Step], normalise: Callable, image_size: int, seed: int | None
    ) -> None:
        self.steps, self.normalise = steps, normalise
        self.image_size, self.seed = image_size, seed
        self.epoch = 0
        self._generators: dict[torch.device, torch.Generator] = {}

    @classmethod
    def from_albumentations(
        cls,
        augmentation: Sequence[A.BasicTransform],
        preprocess: A.BasicTransform,
        image_size: int,
        seed: int | None = None,
    ) -> BatchTransform:
        """Raises ValueError naming the first transform (or parameter) it cannot map."""
        return cls(plan(parse(augmentation), image_size), normaliser(preprocess), image_size, seed)

    @staticmethod
    def unsupported(
        augmentation: Sequence[A.BasicTransform],
        preprocess: A.BasicTransform,
        image_size: int | None = None,
    ) -> str | None:
        """Why this recipe cannot run as a batch (None if it can), for `data.pipeline=auto` to fall
        back to the per-sample path. Image sizes are checked only when `image_size` is given."""
        try:
            ops = parse(augmentation)
            normaliser(preprocess)
            if image_size is not None:
                plan(ops, image_size)
        except ValueError as error:
            return str(error)
        return None

    @staticmethod
    def supports(
        augmentation: Sequence[A.BasicTransform],
        preprocess: A.BasicTransform,
        image_size: int | None = None,
    ) -> bool:
        return BatchTransform.unsupported(augmentation, preprocess, image_size) is None

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's stream: a function of (seed, epoch), so a resumed run goes on
        with the augmentations an uninterrupted one would have drawn."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._generators.clear()

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator for `device`, made on first use from `seed` and the epoch, or when
        `seed` is None from the global torch RNG (which `seed_everything` fixes)."""
        if device not in self._generators:
            seed = self.seed if self.seed is not None else int(torch.randint(2**62, ()).item())
            stream = ((seed ^ _SALT) + self.epoch * 1_000_003) % 2**63
            self._generators[device] = torch.Generator(device).manual_seed(stream)
        return self._generators[device]

    def is_random(self, train: bool) -> bool:
        """Whether calls differ from one another (else a split can be transformed once)."""
        return train and bool(self.steps)

    @functools.cached_property
    def columns(self) -> int:
        """How many uniform numbers each image draws: the width of `uniforms`' table."""
        draw = Draw.counting(torch.device("cpu"))
        self._augment(torch.zeros(1, 3, self.image_size, self.image_size), draw)
        return draw.used

    def uniforms(self, n: int, device: torch.device) -> Tensor:
        """The random numbers of `n` images [n, columns], in one call from the stream."""
        generator = self.generator(device)
        return torch.rand(n, self.columns, generator=generator, device=device)

    def __call__(self, images: Tensor, train: bool, uniforms: Tensor | None = None) -> Tensor:
        """float32 [B, C, image_size, image_size]; `train=False` only resizes and normalises.
        Training draws each image's numbers from the stream, or takes them from `uniforms`
        ([B, columns], row i for image i)."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(
                f"expected uint8 [B, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        x = self._resize(images.float())
        if train and self.steps:
            if uniforms is None:
                uniforms = self.uniforms(len(x), x.device)
            x = self._augment(x, Draw(uniforms))
        return self.normalise(x)

    def _augment(self, x: Tensor, draw: Draw) -> Tensor:
        for step in self.steps:
            x = (
                self._geometric(x, step, draw)
                if isinstance(step, list)
                else self._pixel(x, step, draw)
            )
        return x

    def _resize(self, x: Tensor) -> Tensor:
        size = (self.image_size, self.image_size)
        if tuple(x.shape[-2:]) == size:
            return x
        down = x.shape[-2] > size[0] or x.shape[-1] > size[1]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)
        # Rounded as cv2 resizes uint8 in the per-sample path (where downscaling has no antialias).
        return x.round().clamp(0, 255)

    @staticmethod
    def _geometric(x: Tensor, step: list[tuple[Geometric, tuple[int, int]]], draw: Draw) -> Tensor:
        """Each op of the group applied to the samples that draw it, then one resampling."""
        identity = torch.eye(3, device=x.device).expand(len(x), 3, 3)
        stages = []
        for op, frame in step:
            applied = (draw.rand() < op.p)[:, None, None]
            stages.append((op, torch.where(applied, op.matrix(draw, *frame), identity), frame))
        return warp(x, stages)

    @staticmethod
    def _pixel(x: Tensor, op: Pixel, draw: Draw) -> Tensor:
        applied = (draw.rand() < op.p).view(-1, 1, 1, 1)
        return torch.where(applied, op.apply(x, draw), x)
