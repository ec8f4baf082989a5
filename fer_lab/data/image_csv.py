"""A CSV of `image,label` rows plus an image folder, like the muxspace set of seed 002."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fer_lab.data.faces import Faces, FaceSplits, split_off
from fer_lab.errors import DataError


class ImageFolderCSV:
    """Labelled photos of any size and colour listed in a CSV (e.g. `legend.csv`).

    Labels are matched to `classes` after lower-casing and stripping. Image paths are
    relative to the CSV's folder unless `image_root` is given. Splits follow seed 002: a
    seeded `val_fraction` of all rows, then `test_fraction` of the rest, stratified by class.
    """

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
    ) -> None:
        self.path = Path(path).expanduser()
        self.name = name
        self.classes = [c.strip().lower() for c in classes]
        self.image_root = Path(image_root).expanduser() if image_root else self.path.parent
        self.image_column = image_column
        self.label_column = label_column
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed

    def load(self) -> FaceSplits:
        if not self.path.is_file():
            raise DataError(
                f"{self.path}: no such CSV. Point dataset.path at the label file (for the "
                "muxspace facial_expressions set: data/legend.csv, with "
                "dataset.image_root=.../images)"
            )
        table = pd.read_csv(self.path, dtype=str)
        for column in (self.image_column, self.label_column):
            if column not in table.columns:
                raise DataError(
                    f"{self.path}: no column {column!r} (columns: {list(table.columns)}); "
                    f"set dataset.image_column / dataset.label_column"
                )
        labels = table[self.label_column].str.strip().str.lower()
        lookup = {name: i for i, name in enumerate(self.classes)}
        unknown = table.index[~labels.isin(lookup)]
        if len(unknown):
            examples = ", ".join(
                f"line {i + 2}: {table.at[i, self.label_column]!r}" for i in unknown[:20]
            )
            raise DataError(
                f"{self.path}: {len(unknown)} label(s) not in dataset.classes {self.classes} "
                f"({examples}); add the class or fix the rows"
            )
        files = [self.image_root / name for name in table[self.image_column]]
        missing = [(i, f) for i, f in enumerate(files) if not f.is_file()]
        if missing:
            examples = ", ".join(f"line {i + 2}: {f}" for i, f in missing[:20])
            raise DataError(f"{self.path}: {len(missing)} image(s) not found ({examples})")
        faces = Faces(files, labels.map(lookup).to_numpy(dtype=np.int64))
        rest, val = split_off(faces, self.val_fraction, self.seed)
        train, test = split_off(rest, self.test_fraction, self.seed + 1)
        return FaceSplits(train=train, val=val, test=test)
