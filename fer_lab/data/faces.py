"""The in-memory form every dataset loader produces, the torch Dataset over it, and the checks
of image files the loaders share."""

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fer_lab.core.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_JPEG_START, _JPEG_SCAN, _JPEG_END = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"  # IEND chunk with its CRC


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
class BadItem:
    """A CSV row or image file a loader found unusable: the error lists these, skip records them."""

    source: str  # the CSV file or the image file
    line: int | None  # CSV line number (the header is line 1); None for folder images
    split: str | None  # train/val/test or the Usage value, where known
    reason: str  # short: "2303 pixel values, expected 2304", "truncated image"


@dataclass
class FaceSplits:
    train: Faces
    val: Faces
    test: Faces
    skipped: list[BadItem] = field(default_factory=list)  # left out by dataset.on_bad_data=skip


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


def image_problem(path: Path) -> str | None:
    """Why training could not use `path` (None when it decodes in full), reading it once.

    cv2 (the decoder training uses) must decode it, and a JPEG or PNG must end with its end
    marker: cv2 turns a truncated JPEG into a partly grey image instead of failing.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "file not found"
    except OSError as error:
        return f"cannot read the file ({error.strerror})"
    if not data:
        return "empty file"
    if _truncated(data):
        return "truncated image"
    if cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE) is None:
        return "not a readable image"
    return None


def _truncated(data: bytes) -> bool:
    if data.startswith(_JPEG_START):  # the end marker follows the last scan's data
        return data.rfind(_JPEG_END) < data.rfind(_JPEG_SCAN)
    if data.startswith(_PNG_START):
        return _PNG_END not in data
    return False


class ImageEntry(NamedTuple):
    """An image file a loader found listed, before it is checked."""

    path: Path
    label: int
    split: str | None  # the folder release's train/test; None where splits come later
    line: int | None = None  # the CSV line that lists it


def list_class_folders(
    folder: Path, classes: Sequence[str], split: str
) -> tuple[list[ImageEntry], list[BadItem]]:
    """The image files of `folder/<class>/` and, as bad items, the files that are not images.

    Class folders match `classes` case-insensitively; hidden files (.DS_Store, ._*) are ignored.
    """
    subfolders = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    entries: list[ImageEntry] = []
    not_images: list[BadItem] = []
    for label, name in enumerate(classes):
        if name.lower() not in subfolders:
            raise DataError(f"{folder}: no folder for class {name!r} (found {sorted(subfolders)})")
        for path in sorted(subfolders[name.lower()].iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                entries.append(ImageEntry(path, label, split))
            else:
                not_images.append(BadItem(str(path), None, split, "not an image file"))
    return entries, not_images


def without_unreadable(entries: list[ImageEntry]) -> tuple[list[ImageEntry], list[BadItem]]:
    """The entries whose file decodes, and the others as bad items (each file read once)."""
    problems = [image_problem(entry.path) for entry in entries]
    pairs = list(zip(entries, problems, strict=True))
    bad = [BadItem(str(e.path), e.line, e.split, problem) for e, problem in pairs if problem]
    return [entry for entry, problem in pairs if problem is None], bad


def without_duplicates(
    entries: list[ImageEntry], key: Callable[[ImageEntry], Hashable]
) -> tuple[list[ImageEntry], list[BadItem]]:
    """The first entry of each `key` and, as bad items, the later ones: the same image again,
    which counts double in its split, or leaks a test image into training."""
    first: dict[Hashable, ImageEntry] = {}
    kept: list[ImageEntry] = []
    bad: list[BadItem] = []
    for entry in entries:
        seen = first.setdefault(key(entry), entry)
        if seen is entry:
            kept.append(entry)
            continue
        # a CSV row by its line, a file of the folder release as split/class/name
        original = f"line {seen.line}" if seen.line is not None else "/".join(seen.path.parts[-3:])
        leak = " (train/test leakage)" if seen.split != entry.split else ""
        bad.append(
            BadItem(str(entry.path), entry.line, entry.split, f"duplicate of {original}{leak}")
        )
    return kept, bad


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
