"""FER2013's per-image release (Kaggle dataset 'msambare/fer2013'): train/ and test/ folders."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer_lab.core.errors import DataError
from fer_lab.data.faces import (
    BadItem,
    Faces,
    FaceSplits,
    ImageEntry,
    list_class_folders,
    split_off,
    without_duplicates,
    without_unreadable,
)
from fer_lab.data.fer2013 import HOW_TO_GET, _existing
from fer_lab.data.validation import check_policy, enforce_policy, require_images_per_class


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
