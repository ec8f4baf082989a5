"""The in-memory form every dataset loader produces, and the torch Dataset over it."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fer_lab.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Faces:
    """One split: images as a uint8 array [N, H, W] (decoded) or a list of files, and labels."""

    images: np.ndarray | list[Path]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "Faces":
        if isinstance(self.images, np.ndarray):
            return Faces(self.images[indices], self.labels[indices])
        return Faces([self.images[i] for i in indices], self.labels[indices])


@dataclass
class FaceSplits:
    train: Faces
    val: Faces
    test: Faces


def class_indices(wanted: Sequence[str], known: Sequence[str], where: str) -> list[int]:
    """Position in `known` of each class in `wanted` (case-insensitive), or a clear error."""
    lookup = {name.lower(): i for i, name in enumerate(known)}
    unknown = [name for name in wanted if name.lower() not in lookup]
    if unknown:
        raise DataError(
            f"{where}: unknown classes {unknown}; dataset.classes must be taken from {list(known)}"
        )
    return [lookup[name.lower()] for name in wanted]


def split_off(faces: Faces, fraction: float, seed: int) -> tuple[Faces, Faces]:
    """Seeded split stratified by class: (rest, held_out) with `fraction` of each class held out."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(faces.labels):
        members = rng.permutation(np.flatnonzero(faces.labels == label))
        held.append(members[: round(fraction * len(members))])
    held_out = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(faces)), held_out)
    return faces.subset(rest), faces.subset(held_out)


def read_image(path: Path, channels: int) -> np.ndarray:
    """Decode an image file to uint8 HxWxC with C = `channels` (1 grey, 3 RGB)."""
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise DataError(f"{path}: not a readable image; remove it or replace it with a valid file")
    if channels == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """A greyscale HxW array as uint8 HxWxC (the grey value repeated for RGB models)."""
    return np.repeat(image[:, :, None], channels, axis=2)


class FaceDataset(Dataset):
    """Yields (float tensor CxHxW, label) after the albumentations `transform`."""

    def __init__(self, faces: Faces, channels: int, transform: Callable[..., dict]) -> None:
        self.faces = faces
        self.channels = channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        source = self.faces.images[index]
        if isinstance(source, Path):
            image = read_image(source, self.channels)
        else:
            image = to_channels(source, self.channels)
        # Some albumentations normalisations (min_max) return float64; models take float32.
        return self.transform(image=image)["image"].float(), int(self.faces.labels[index])
