"""FER2013 as the Kaggle CSV (`FER2013CSV`), and what both FER2013 loaders share.

The CSV is read by fer2013_reader.py; the per-image folder release is fer2013_folder.py.
FER2013_CLASSES is defined in fer2013_reader.py, which checks emotion codes against it (so
that the reader needs nothing from here), and is imported from here everywhere else.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fer_lab.core.errors import DataError
from fer_lab.data.cache import Table, cached_table
from fer_lab.data.faces import BadItem, Faces, FaceSplits, class_indices
from fer_lab.data.fer2013_reader import FER2013_CLASSES, parse_fer2013_csv
from fer_lab.data.validation import check_policy, enforce_policy

KAGGLE_USAGES = ("Training", "PublicTest", "PrivateTest")
# Part of the cache key: bump it when the parsed table or the checks behind it change, so
# that caches written by older code are rebuilt.
TABLE_VERSION = 1

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

    The parsed file (every row, whatever `classes` and `splits` say) is kept in `cache_dir`
    (None: no cache), so later loads, of any class subset, skip the parse.
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
        cache_dir: str | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        self.name = name
        self.classes = list(classes)
        self.splits = dict(
            splits or {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
        )
        self.image_size = image_size
        self.on_bad_data = check_policy(on_bad_data)
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
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
        count = self.image_size**2
        kind = f"fer2013-{count}px-v{TABLE_VERSION}"
        table = cached_table(path, self.cache_dir, kind, lambda: parse_fer2013_csv(path, count))
        problems = self._problems(table)
        skipped = enforce_policy(
            _bad_items(path, table, problems), self.on_bad_data, str(path), self._hint()
        )
        kept = (problems == "") & self._wanted(table)
        return FaceSplits(**self._by_usage(path, table, kept), skipped=skipped)

    def _problems(self, table: Table) -> np.ndarray:
        """Per row what is wrong with it ("" when nothing): its emotion code, else its Usage,
        else, in a row training would use, its pixels."""
        usage = table["usage"]
        problems = table["emotion_problems"].astype(object)
        odd = (problems == "") & ~np.isin(usage, self.usages)
        problems[odd] = [
            f"unknown Usage {u!r}" if u else "empty Usage field" for u in usage[odd].tolist()
        ]
        used = (problems == "") & self._wanted(table)
        problems[used] = table["pixel_problems"][used]
        return problems

    def _wanted(self, table: Table) -> np.ndarray:
        """The rows of `classes` and of the Usages `splits` names."""
        usages = list(self.splits.values())
        return np.isin(table["codes"], self.codes) & np.isin(table["usage"], usages)

    def _hint(self) -> str:
        return (
            f"Each row needs an emotion code 0..6, {self.image_size**2} pixel values 0..255 "
            f"and a Usage in {self.usages}."
        )

    def _by_usage(self, path: Path, table: Table, kept: np.ndarray) -> dict[str, Faces]:
        """Each split's faces (its `kept` rows). An empty split is an error whatever
        dataset.on_bad_data says: there would be nothing to fit or to score."""
        label_of = np.zeros(len(FER2013_CLASSES), dtype=np.int64)  # emotion code -> label
        label_of[self.codes] = np.arange(len(self.codes))
        side = self.image_size
        splits = {}
        for split, usage in self.splits.items():
            rows = np.flatnonzero(kept & (table["usage"] == usage))
            if not rows.size:
                raise DataError(
                    f"{path}: the {split} split is empty: no usable rows with Usage={usage!r} "
                    f"for classes {self.classes}; check dataset.splits and dataset.classes"
                )
            pixels = table["pixels"][rows].reshape(-1, side, side)
            splits[split] = Faces(pixels, label_of[table["codes"][rows]])
        return splits


def _bad_items(path: Path, table: Table, problems: np.ndarray) -> list[BadItem]:
    """The bad rows and the lines with extra fields, in file order."""
    rows = np.flatnonzero(problems != "")
    found = zip(table["lines"][rows], table["usage"][rows], problems[rows], strict=True)
    bad = [BadItem(str(path), int(line), str(u) or None, str(why)) for line, u, why in found]
    extra = zip(table["extra_lines"], table["extra_problems"], strict=True)
    bad += [BadItem(str(path), int(line), None, str(why)) for line, why in extra]
    return sorted(bad, key=lambda item: item.line)
