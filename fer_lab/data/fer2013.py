"""FER2013 in its two common forms: the Kaggle CSV and the per-image folder release."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fer_lab.data.faces import (
    BadItem,
    Faces,
    FaceSplits,
    ImageEntry,
    class_indices,
    list_class_folders,
    split_off,
    without_duplicates,
    without_unreadable,
)
from fer_lab.data.validation import (
    check_policy,
    enforce_policy,
    parse_pixel_rows,
    read_csv_rows,
    require_columns,
    require_images_per_class,
)
from fer_lab.errors import DataError

# The emotion codes of the FER2013 CSV, in code order.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
KAGGLE_USAGES = ("Training", "PublicTest", "PrivateTest")

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

    Bad rows (an emotion code outside 0..6, an unknown Usage, pixels that are not
    `image_size`**2 integers 0..255, a line with extra fields) stop the load or, with
    `on_bad_data="skip"`, are left out and listed in `FaceSplits.skipped`. Pixels are checked
    only in the rows training would use.
    """

    colour = False  # greyscale faces: colour models see the grey value three times

    def __init__(
        self,
        path: str,
        classes: Sequence[str],
        name: str = "fer2013",
        splits: Mapping[str, str] | None = None,
        image_size: int = 48,
        on_bad_data: str = "error",
    ) -> None:
        self.path = Path(path).expanduser()
        self.name = name
        self.classes = list(classes)
        self.splits = dict(
            splits or {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
        )
        self.image_size = image_size
        self.on_bad_data = check_policy(on_bad_data)
        self.codes = class_indices(self.classes, FER2013_CLASSES, "dataset.classes")
        self.usages = sorted({*KAGGLE_USAGES, *self.splits.values()})

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
        table, lines, bad = read_csv_rows(path)
        columns = ("emotion", "pixels", "Usage")
        require_columns(path, table, columns, "expected the Kaggle header 'emotion,pixels,Usage'")
        codes = pd.to_numeric(table["emotion"], errors="coerce")
        reasons = self._field_problems(table, codes)
        used = reasons.isna() & codes.isin(self.codes) & table["Usage"].isin(self.splits.values())
        pixels, reasons[used] = parse_pixel_rows(table["pixels"][used].tolist(), self.image_size**2)
        bad += [
            BadItem(str(path), int(lines[row]), table.at[row, "Usage"] or None, reason)
            for row, reason in reasons.dropna().items()
        ]
        bad.sort(key=lambda item: item.line)
        skipped = enforce_policy(bad, self.on_bad_data, str(path), self._hint())
        kept = used & reasons.isna()
        code_to_label = {code: label for label, code in enumerate(self.codes)}
        labels = codes[kept].map(code_to_label).to_numpy(dtype=np.int64)
        faces = Faces(pixels.reshape(-1, self.image_size, self.image_size), labels)
        splits = self._by_usage(path, faces, table["Usage"][kept].to_numpy())
        return FaceSplits(**splits, skipped=skipped)

    def _field_problems(self, table: pd.DataFrame, codes: pd.Series) -> pd.Series:
        """Per row, what is wrong with its emotion or Usage field (None when both are fine)."""
        usage, emotion = table["Usage"], table["emotion"]
        reasons = pd.Series(None, index=table.index, dtype=object)
        odd = ~usage.isin(self.usages)
        reasons[odd] = [f"unknown Usage {u!r}" if u else "empty Usage field" for u in usage[odd]]
        odd = ~codes.isin(range(len(FER2013_CLASSES)))
        reasons[odd] = [
            _emotion_problem(e, c) for e, c in zip(emotion[odd], codes[odd], strict=True)
        ]
        return reasons

    def _hint(self) -> str:
        return (
            f"Each row needs an emotion code 0..6, {self.image_size**2} pixel values 0..255 "
            f"and a Usage in {self.usages}."
        )

    def _by_usage(self, path: Path, faces: Faces, usages: np.ndarray) -> dict[str, Faces]:
        """Each split's faces. An empty split is an error whatever dataset.on_bad_data says:
        there would be nothing to fit or to score."""
        splits = {}
        for split, usage in self.splits.items():
            splits[split] = faces.subset(np.flatnonzero(usages == usage))
            if not len(splits[split]):
                raise DataError(
                    f"{path}: the {split} split is empty: no usable rows with Usage={usage!r} "
                    f"for classes {self.classes}; check dataset.splits and dataset.classes"
                )
        return splits


def _emotion_problem(text: str, code: float) -> str:
    if not text:
        return "empty emotion field"
    if np.isnan(code):
        return f"non-numeric emotion code {text!r}"
    return f"unknown emotion code {text}"


class FER2013Folder:
    """The per-image release: `train/<class>/*.jpg` and `test/<class>/*.jpg`.

    It has no validation split, so a seeded, stratified `val_fraction` of train is held out.
    Class folders match `classes` case-insensitively; folders of other classes are skipped.

    Each file in a class folder is decoded once at load. Bad files (not an image, unreadable,
    truncated, a file name seen before) stop the load or, with `on_bad_data="skip"`, are left
    out and listed in `FaceSplits.skipped`. Hidden files (.DS_Store, ._*) are ignored. File
    names are unique in the Kaggle release, so a repeated name is the same face twice: within
    a split it counts double, and a train copy of a test face leaks the test set (the train
    copy is the one reported).
    """

    colour = False  # greyscale faces: colour models see the grey value three times

    def __init__(
        self,
        path: str,
        classes: Sequence[str],
        name: str = "fer2013",
        val_fraction: float = 0.1,
        seed: int = 0,
        on_bad_data: str = "error",
    ) -> None:
        self.path = Path(path).expanduser()
        self.name = name
        self.classes = list(classes)
        self.val_fraction = val_fraction
        self.seed = seed
        self.on_bad_data = check_policy(on_bad_data)

    def load(self) -> FaceSplits:
        root = _existing(self.path, [])
        entries, not_images = self._list(root)
        entries, duplicates = without_duplicates(entries, key=lambda entry: entry.path.name)
        entries, unreadable = without_unreadable(entries)
        bad = sorted(not_images + duplicates + unreadable, key=lambda item: item.source)
        skipped = enforce_policy(bad, self.on_bad_data, str(root))
        train, test = (self._faces(root, split, entries, skipped) for split in ("train", "test"))
        train, val = split_off(train, self.val_fraction, self.seed)
        return FaceSplits(train=train, val=val, test=test, skipped=skipped)

    def _list(self, root: Path) -> tuple[list[ImageEntry], list[BadItem]]:
        """The images and the other files of test/, then train/: so of a file in both, the
        train copy is the duplicate reported."""
        entries: list[ImageEntry] = []
        not_images: list[BadItem] = []
        for split in ("test", "train"):
            if not (root / split).is_dir():
                raise DataError(
                    f"{root / split}: missing; the folder release has train/ and test/. "
                    + HOW_TO_GET
                )
            found, others = list_class_folders(root / split, self.classes, split)
            entries += found
            not_images += others
        return entries, not_images

    def _faces(
        self, root: Path, split: str, entries: list[ImageEntry], skipped: list[BadItem]
    ) -> Faces:
        mine = [entry for entry in entries if entry.split == split]
        labels = np.array([entry.label for entry in mine], dtype=np.int64)
        left_out = sum(item.split == split for item in skipped)
        require_images_per_class(labels, self.classes, str(root / split), left_out)
        return Faces([entry.path for entry in mine], labels)
