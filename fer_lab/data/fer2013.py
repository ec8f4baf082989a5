"""FER2013 in its two common forms: the Kaggle CSV and the per-image folder release."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fer_lab.data.faces import (
    IMAGE_SUFFIXES,
    Faces,
    FaceSplits,
    class_indices,
    split_off,
)
from fer_lab.errors import DataError

# The emotion codes of the FER2013 CSV, in code order.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

HOW_TO_GET = (
    "FER2013 comes from the Kaggle competition "
    "'challenges-in-representation-learning-facial-expression-recognition-challenge' "
    "(fer2013.csv inside fer2013.tar.gz): "
    "`kaggle competitions download -c "
    "challenges-in-representation-learning-facial-expression-recognition-challenge`, "
    "or `python -m fer_lab.data.download fer2013` with Kaggle credentials. The per-image "
    "release (train/ and test/ folders) is the Kaggle dataset 'msambare/fer2013'. "
    "Then pass dataset.path=/where/it/is."
)


def _existing(path: Path, alternatives: Sequence[Path]) -> Path:
    for candidate in (path, *alternatives):
        if candidate.exists():
            return candidate
    looked = ", ".join(str(p) for p in (path, *alternatives))
    raise DataError(f"FER2013 not found (looked at {looked}). {HOW_TO_GET}")


class FER2013CSV:
    """The Kaggle CSV (`emotion,pixels,Usage`), plain or gzip-compressed.

    `splits` maps train/val/test to `Usage` values; the default protocol tunes on
    PublicTest and reports PrivateTest. `classes` may be a subset (happy vs sad): rows of
    other emotions are left out and labels follow the order of `classes`.
    """

    def __init__(
        self,
        path: str,
        classes: Sequence[str],
        name: str = "fer2013",
        splits: Mapping[str, str] | None = None,
        image_size: int = 48,
    ) -> None:
        self.path = Path(path).expanduser()
        self.name = name
        self.classes = list(classes)
        self.splits = dict(
            splits or {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
        )
        self.image_size = image_size
        self.codes = class_indices(self.classes, FER2013_CLASSES, "dataset.classes")

    def resolve_path(self) -> Path:
        """The CSV itself, accepting `fer2013.csv` for `fer2013.csv.gz` and the other way round."""
        alternatives = [Path(str(self.path) + ".gz")]
        if self.path.suffix == ".gz":
            alternatives = [self.path.with_suffix("")]
        if self.path.is_dir():
            alternatives = [self.path / "fer2013.csv", self.path / "fer2013.csv.gz"]
        found = _existing(self.path, alternatives)
        if found.is_dir():
            raise DataError(f"{found}: is a folder with no fer2013.csv(.gz) inside. {HOW_TO_GET}")
        return found

    def load(self) -> FaceSplits:
        path = self.resolve_path()
        table = pd.read_csv(path, dtype={"emotion": "Int64", "pixels": str, "Usage": str})
        missing = {"emotion", "pixels", "Usage"} - set(table.columns)
        if missing:
            raise DataError(
                f"{path}: missing column(s) {sorted(missing)}; expected the Kaggle header "
                "'emotion,pixels,Usage'"
            )
        table = table[table["emotion"].isin(self.codes)]
        return FaceSplits(
            **{split: self._split(path, table, usage) for split, usage in self.splits.items()}
        )

    def _split(self, path: Path, table: pd.DataFrame, usage: str) -> Faces:
        rows = table[table["Usage"] == usage]
        if rows.empty:
            raise DataError(f"{path}: no rows with Usage={usage!r} for classes {self.classes}")
        pixels_per_image = self.image_size * self.image_size
        counts = rows["pixels"].str.count(" ") + 1
        bad = rows.index[counts != pixels_per_image]
        if len(bad):
            lines = ", ".join(str(i + 2) for i in bad[:20])
            raise DataError(
                f"{path}: {len(bad)} row(s) do not have {pixels_per_image} pixel values "
                f"(lines {lines}); fix or remove them"
            )
        flat = np.fromstring(" ".join(rows["pixels"].tolist()), dtype=np.uint8, sep=" ")
        images = flat.reshape(len(rows), self.image_size, self.image_size)
        code_to_label = {code: label for label, code in enumerate(self.codes)}
        labels = rows["emotion"].map(code_to_label).to_numpy(dtype=np.int64)
        return Faces(images, labels)


class FER2013Folder:
    """The per-image release: `train/<class>/*.jpg` and `test/<class>/*.jpg`.

    It has no validation split, so a seeded, stratified `val_fraction` of train is held out.
    Class folders match `classes` case-insensitively; folders of other classes are skipped.
    """

    def __init__(
        self,
        path: str,
        classes: Sequence[str],
        name: str = "fer2013",
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.path = Path(path).expanduser()
        self.name = name
        self.classes = list(classes)
        self.val_fraction = val_fraction
        self.seed = seed

    def load(self) -> FaceSplits:
        root = _existing(self.path, [])
        train = self._read(root / "train")
        train, val = split_off(train, self.val_fraction, self.seed)
        return FaceSplits(train=train, val=val, test=self._read(root / "test"))

    def _read(self, folder: Path) -> Faces:
        if not folder.is_dir():
            raise DataError(
                f"{folder}: missing; the folder release has train/ and test/. {HOW_TO_GET}"
            )
        subfolders = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            if name.lower() not in subfolders:
                raise DataError(
                    f"{folder}: no folder for class {name!r} (found {sorted(subfolders)})"
                )
            images = sorted(
                p for p in subfolders[name.lower()].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
            files += images
            labels += [label] * len(images)
        return Faces(files, np.array(labels, dtype=np.int64))
