"""FER2013 in its two common forms: the Kaggle CSV and the per-image folder release."""

import gzip
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fer_lab.data.cache import Table, cached_table
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
_HEADER = b"emotion,pixels,Usage"
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


def parse_fer2013_csv(path: Path, count: int) -> Table:
    """The whole CSV as arrays, whatever dataset.classes and dataset.splits say, so that one
    parse (and one cache file) serves every class subset.

    Per row: `lines` (the header is line 1), `codes` (the emotion code, -1 when unusable),
    `emotion_problems`, `usage` (as written), `pixels` [rows, count] (zeros when unreadable) and
    `pixel_problems` ("" when fine); and `extra_lines`, `extra_problems`: the lines with extra
    fields, which are no row.
    """
    fields = _read_fields(path)
    codes = pd.to_numeric(pd.Series(fields.emotions, dtype=object), errors="coerce")
    valid = codes.isin(range(len(FER2013_CLASSES))).to_numpy()
    emotion_problems = [
        "" if ok else _emotion_problem(text, code)
        for ok, text, code in zip(valid, fields.emotions, codes, strict=True)
    ]
    images, pixel_problems = parse_pixel_rows(fields.pixels, count)
    return {
        "lines": np.array(fields.lines, dtype=np.int64),
        "codes": np.where(valid, codes.to_numpy(), -1).astype(np.int8),
        "emotion_problems": np.array(emotion_problems, dtype=str),
        "usage": np.array(fields.usages, dtype=str),
        "pixels": images,
        "pixel_problems": np.array([p or "" for p in pixel_problems], dtype=str),
        "extra_lines": np.array([item.line for item in fields.extra], dtype=np.int64),
        "extra_problems": np.array([item.reason for item in fields.extra], dtype=str),
    }


@dataclass
class _Fields:
    """Per row its line number (the header is line 1) and its three fields as text; and the
    lines with extra fields, which make no row."""

    lines: list[int] = field(default_factory=list)
    emotions: list[str] = field(default_factory=list)
    pixels: list[str | np.ndarray] = field(default_factory=list)
    usages: list[str] = field(default_factory=list)
    extra: list[BadItem] = field(default_factory=list)

    def add(self, line: int, emotion: str, pixels: str | np.ndarray, usage: str) -> None:
        self.lines.append(line)
        self.emotions.append(emotion)
        self.pixels.append(pixels)
        self.usages.append(usage)


def _read_fields(path: Path) -> _Fields:
    """A plain Kaggle file is cut by hand (`_split_lines`); anything else is left to pandas."""
    data = _plain_kaggle_bytes(path)
    if data is not None:
        return _split_lines(path, data)
    table, lines, bad = read_csv_rows(path)
    columns = ("emotion", "pixels", "Usage")
    require_columns(path, table, columns, "expected the Kaggle header 'emotion,pixels,Usage'")
    fields = _Fields(extra=bad)
    for line, *row in zip(lines.tolist(), *(table[c].tolist() for c in columns), strict=True):
        fields.add(line, *row)
    return fields


def _plain_kaggle_bytes(path: Path) -> bytes | None:
    """The file's bytes when cutting lines at "\\n" and fields at "," gives what pandas would:
    the exact Kaggle header, no quotes, no "\\r", ASCII only (the Kaggle file is all that).
    Else None, and pandas reads the file (~2.5 s slower for FER2013)."""
    if path.suffix not in (".csv", ".gz"):  # pandas infers other compressions from the suffix
        return None
    try:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, zlib.error):
        return None  # pandas says what is wrong, as before
    plain = data.startswith(_HEADER + b"\n") and data.isascii()
    return data if plain and b'"' not in data and b"\r" not in data else None


def _split_lines(path: Path, data: bytes) -> _Fields:
    """Each line cut at its first and last comma, ~0.1 s for FER2013 where pandas takes ~1.5 s.
    Other lines go to `_odd_line`.

    The pixels stay views of `data`: numpy views rather than memoryviews, which the garbage
    collector tracks: 36k of those set off a full collection, ~0.4 s in a process with torch.
    """
    view = np.frombuffer(data, dtype=np.uint8)
    fields = _Fields()
    start, line = len(_HEADER) + 1, 2
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        first, last = data.find(b",", start, end), data.rfind(b",", start, end)
        # the usual line: exactly two commas, and more than ",," (a line of empty fields)
        if end - start > 2 and 0 <= first < last and data.find(b",", first + 1, last) < 0:
            emotion, usage = data[start:first].decode(), data[last + 1 : end].decode()
            fields.add(line, emotion, view[first + 1 : last], usage)
        else:
            row = _odd_line(data[start:end].decode())
            if isinstance(row, str):
                fields.extra.append(BadItem(str(path), line, None, row))
            elif row:
                fields.add(line, *row)
        start, line = end + 1, line + 1
    return fields


def _odd_line(text: str) -> list[str] | str | None:
    """A line without exactly two commas, as pandas reads it: its three fields (missing ones
    empty), why it is bad (extra fields), or None when all its fields are empty (dropped)."""
    fields = text.split(",")
    if len(fields) > 3:
        return f"expected 3 fields, saw {len(fields)}"
    return fields + [""] * (3 - len(fields)) if any(fields) else None


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
