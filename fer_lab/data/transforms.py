"""Albumentations pipelines: augmentation for training, the deterministic part for evaluation."""

from collections.abc import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2


def build_transforms(
    image_size: int,
    augmentation: Sequence[A.BasicTransform],
    preprocess: A.BasicTransform,
    seed: int | None = None,
) -> tuple[A.Compose, A.Compose]:
    """(train, eval) pipelines: resize to the model's input, [augment], normalise, to tensor.

    Validation and test see only resize and normalisation, so their numbers are comparable
    across augmentation recipes. Albumentations ignores global seeds: `seed` seeds its own.
    """
    resize = A.Resize(image_size, image_size)
    train = A.Compose([resize, *augmentation, preprocess, ToTensorV2()], seed=seed)
    evaluation = A.Compose([resize, preprocess, ToTensorV2()])
    return train, evaluation
