"""Reads the FER2013 Kaggle CSV into the table that `FER2013CSV` loads and caches.

A plain Kaggle file (the exact header, no quotes, no "\\r", ASCII only) is split by hand for
speed: ~0.1 s where pandas takes ~1.5 s. Anything unusual goes through the pandas path in
validation.py, so error messages stay the same.
"""

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fer_lab.data.cache import Table
from fer_lab.data.faces import BadItem
from fer_lab.data.validation import parse_pixel_rows, read_csv_rows, require_columns

# The emotion codes of the FER2013 CSV, in code order.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
_HEADER = b"emotion,pixels,Usage"


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
