"""A CSV of `image,label` rows plus an image folder, like the muxspace set of seed 002."""

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fer_lab.core.errors import DataError
from fer_lab.data.faces import (
    BadItem,
    Faces,
    FaceSplits,
    ImageEntry,
    split_off,
    without_duplicates,
    without_unreadable,
)
from fer_lab.data.validation import (
    check_policy,
    enforce_policy,
    read_csv_rows,
    require_columns,
    require_images_per_class,
)

log = logging.getLogger(__name__)

# More than this fraction of the listed images missing means a wrong image folder.
MAX_MISSING_FRACTION = 0.5


class ImageFolderCSV:
    """Labelled photos of any size and colour listed in a CSV (e.g. `legend.csv`).

    Labels are matched to `classes` after lower-casing and stripping. Image paths are
    relative to `image_root` when it is given; otherwise to whichever of these folders holds
    the most listed files, the first on a tie (`image_roots`):

    1. the CSV's folder (`.../legend.csv` beside `images/...` paths);
    2. `images/` beside the CSV's folder: the muxspace facial_expressions layout, where
       `data/legend.csv` lists bare file names kept in `images/`.

    Splits follow seed 002: a seeded `val_fraction` of all rows, then `test_fraction` of the
    rest, stratified by class.

    Each image is decoded once at load. When more than half of the listed files are missing
    from every folder searched, the image folder is wrong: one error names the folders and
    the `dataset.image_root` override, whatever `on_bad_data` says. Other bad rows (an unknown
    label, a missing, unreadable or truncated image, an image listed again) stop the load or,
    with `on_bad_data="skip"`, are left out and listed in `FaceSplits.skipped`.
    """

    colour = True  # photos in colour

    def __init__(
        self,
        path: str,
        classes: Sequence[str],
        name: str = "image_folder_csv",
        image_root: str | None = None,
        image_column: str = "image",
        label_column: str = "emotion",
        val_fraction: float = 0.1,
        test_fraction: float = 0.05,
        seed: int = 0,
        on_bad_data: str = "error",
    ) -> None:
        self.path = Path(path).expanduser()
        self.name = name
        self.classes = [c.strip().lower() for c in classes]
        self.image_root = Path(image_root).expanduser() if image_root else None
        self.image_column = image_column
        self.label_column = label_column
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.on_bad_data = check_policy(on_bad_data)

    def load(self) -> FaceSplits:
        if not self.path.is_file():
            raise DataError(
                f"{self.path}: no such CSV. Point dataset.path at the label file (for the "
                "muxspace facial_expressions set: .../facial_expressions/data/legend.csv; its "
                "images/ folder is then found on its own)"
            )
        table, lines, bad = read_csv_rows(self.path)
        columns = (self.image_column, self.label_column)
        require_columns(
            self.path, table, columns, "set dataset.image_column / dataset.label_column"
        )
        listed, unlabelled = self._entries(table, lines)
        root = self._find_image_root([entry.path for entry in listed])
        listed = [entry._replace(path=root / entry.path) for entry in listed]
        entries, duplicates = without_duplicates(listed, key=lambda e: os.path.normpath(e.path))
        entries, unreadable = without_unreadable(entries)
        bad = sorted(bad + unlabelled + duplicates + unreadable, key=lambda item: item.line)
        hint = f"dataset.classes: {self.classes}."
        skipped = enforce_policy(bad, self.on_bad_data, str(self.path), hint)
        labels = np.array([entry.label for entry in entries], dtype=np.int64)
        self._check_classes({entry.label for entry in listed}, labels, len(skipped))
        faces = Faces([entry.path for entry in entries], labels)
        rest, val = split_off(faces, self.val_fraction, self.seed)
        train, test = split_off(rest, self.test_fraction, self.seed + 1)
        return FaceSplits(train=train, val=val, test=test, skipped=skipped)

    def image_roots(self) -> list[tuple[Path, str]]:
        """The folders image paths may be relative to, in the order they are tried, each with
        why it is tried: `image_root` alone when it is set."""
        if self.image_root is not None:
            return [(self.image_root, "dataset.image_root")]
        return [
            (self.path.parent, "beside the CSV"),
            (self.path.absolute().parent.parent / "images", "images/ beside the CSV's folder"),
        ]

    def _find_image_root(self, names: Sequence[Path]) -> Path:
        """The one of `image_roots` holding the most listed files, the first on a tie (one
        holding all of them ends the search). More than half of them missing from every folder
        is one error naming the folders and the override, not a list of files."""
        names = list(dict.fromkeys(names))
        searched: list[tuple[Path, str, list[Path]]] = []
        for root, why in self.image_roots():
            missing = [root / name for name in names if not (root / name).is_file()]
            if not missing:
                return root
            searched.append((root, why, missing))
        root, _, missing = min(searched, key=lambda found: len(found[2]))
        if len(missing) <= MAX_MISSING_FRACTION * len(names):
            return root  # a few files missing: bad rows, reported with their lines
        raise DataError(self._wrong_root_message(len(names), searched))

    def _wrong_root_message(self, total: int, searched: list[tuple[Path, str, list[Path]]]) -> str:
        fewest = min(len(missing) for _, _, missing in searched)
        folders = [
            f"  {root} ({why}): {len(missing)} of {total} missing, e.g. {missing[0]}"
            for root, why, missing in searched
        ]
        return "\n".join(
            [
                f"{self.path}: {fewest} of {total} listed images not found in the image "
                "folder(s) searched:",
                *folders,
                "Set dataset.image_root=/path/to/images: the folder the CSV's "
                f"{self.image_column!r} paths are relative to (for the muxspace "
                "facial_expressions set: .../facial_expressions/images).",
            ]
        )

    def _entries(
        self, table: pd.DataFrame, lines: np.ndarray
    ) -> tuple[list[ImageEntry], list[BadItem]]:
        """An entry per row naming an image and a class, its path as the CSV gives it; the
        other rows as bad items."""
        lookup = {name: i for i, name in enumerate(self.classes)}
        entries: list[ImageEntry] = []
        bad: list[BadItem] = []
        rows = zip(table[self.image_column], table[self.label_column], lines.tolist(), strict=True)
        for image, label, line in rows:
            code = lookup.get(label.strip().lower())
            reason = _row_problem(image, label, code)
            if reason:
                bad.append(BadItem(str(self.path), line, None, reason))
            else:
                entries.append(ImageEntry(Path(image), code, None, line))
        return entries, bad

    def _check_classes(self, listed: set[int], labels: np.ndarray, left_out: int) -> None:
        """A class the CSV lists must keep an image; one it never lists is only worth a warning
        (the model gets an output it never learns), as the seed's class list allows it."""
        never = [name for label, name in enumerate(self.classes) if label not in listed]
        if never:
            log.warning("%s: no rows for class(es) %s", self.path, never)
        require_images_per_class(labels, self.classes, str(self.path), left_out, among=listed)


def _row_problem(image: str, label: str, code: int | None) -> str | None:
    if not image.strip():
        return "empty image field"
    if not label.strip():
        return "empty label"
    return None if code is not None else f"{label!r} is not in dataset.classes"
