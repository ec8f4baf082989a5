"""Checks every loader runs before training: CSV reading, pixel rows, the bad-data policy.

Bad rows and files are gathered as `BadItem`s first and judged together, so one error lists
them all (`dataset.on_bad_data=error`) or training goes on without them (`skip`).
"""

import logging
import re
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fer_lab.core.errors import DataError
from fer_lab.data.faces import BadItem

log = logging.getLogger(__name__)

POLICIES = ("error", "skip")
MAX_LISTED = 20
# pandas reports each row with too many fields as one line of a ParserWarning.
_SKIPPED_LINE = re.compile(r"Skipping line (\d+): (.+)")
# Small blocks keep the vectorised parse's arrays in the CPU cache (64 rows: ~0.6 s for
# FER2013, 2048 rows: ~1.2 s).
_ROWS_PER_PARSE = 64
_SPACE = np.uint8(ord(" ") - ord("0") + 256)  # a space after subtracting "0" in uint8
Buffer = bytes | memoryview | np.ndarray  # bytes-like: a row's ASCII bytes


def check_policy(on_bad_data: str) -> str:
    if on_bad_data not in POLICIES:
        raise DataError(f"dataset.on_bad_data must be one of {list(POLICIES)}, got {on_bad_data!r}")
    return on_bad_data


def _describe(item: BadItem, where: str) -> str:
    place = "" if item.source == where else _relative(item.source, where)
    if item.line is not None:
        place = f"line {item.line}" if not place else f"{place} (line {item.line})"
    split = f" [{item.split}]" if item.split else ""
    return f"{place}{split}: {item.reason}"


def _relative(source: str, where: str) -> str:
    """`source` below the dataset folder, or below the CSV's folder, else in full."""
    path, root = Path(source), Path(where)
    base = next((b for b in (root, root.parent) if path.is_relative_to(b)), None)
    return str(path.relative_to(base)) if base else source


def bad_data_message(bad: Sequence[BadItem], where: str, hint: str = "") -> str:
    """How every loader says "these rows/files are bad": up to 20 of them, the total, the fix."""
    noun = "row" if all(item.line is not None for item in bad) else "file"
    plural = "" if len(bad) == 1 else "s"
    listed = [f"  {_describe(item, where)}" for item in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        listed.append(f"  ... and {len(bad) - MAX_LISTED} more")
    fix = (
        f"Fix or remove {'it' if len(bad) == 1 else 'them'}, or set dataset.on_bad_data=skip "
        "to train without them."
    )
    return "\n".join(
        [f"{where}: {len(bad)} bad {noun}{plural}:", *listed, *filter(None, [hint, fix])]
    )


def enforce_policy(bad: list[BadItem], policy: str, where: str, hint: str = "") -> list[BadItem]:
    """Stop before training (policy 'error') or return what gets left out (policy 'skip')."""
    if bad and policy == "error":
        raise DataError(bad_data_message(bad, where, hint))
    if bad:
        log.warning("%s: leaving out %d bad rows/files (dataset.on_bad_data=skip)", where, len(bad))
    return bad


def read_csv_rows(path: Path) -> tuple[pd.DataFrame, np.ndarray, list[BadItem]]:
    """Every field as text, each row's line number in the file, and the lines with extra fields.

    Blank lines are dropped but counted, so line numbers match an editor's.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            table = pd.read_csv(
                path, dtype=object, na_filter=False, skip_blank_lines=False, on_bad_lines="warn"
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise DataError(
                f"{path}: not a readable CSV ({error}); fix the file: a header line, then one "
                "row per line with the header's fields"
            ) from None
    bad = _skipped_lines(path, caught)
    lines = np.setdiff1d(np.arange(2, 2 + len(table) + len(bad)), [item.line for item in bad])
    blank = (table == "").all(axis=1).to_numpy()
    return table[~blank].reset_index(drop=True), lines[~blank], bad


def _skipped_lines(path: Path, caught: list[warnings.WarningMessage]) -> list[BadItem]:
    """The lines pandas skipped for having too many fields; other warnings are passed on."""
    bad = []
    for warning in caught:
        found = _SKIPPED_LINE.findall(str(warning.message))
        if not found:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        bad += [BadItem(str(path), int(line), None, reason) for line, reason in found]
    return bad


def require_columns(path: Path, table: pd.DataFrame, columns: Sequence[str], fix: str) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} (columns: {list(table.columns)}); {fix}"
        )


def require_images_per_class(
    labels: np.ndarray,
    classes: Sequence[str],
    where: str,
    left_out: int,
    among: Collection[int] | None = None,
) -> None:
    """A class with no image cannot be learnt or scored: an error whatever the policy.

    `among` limits the check to those class indices (default: every class)."""
    wanted = range(len(classes)) if among is None else among
    empty = [name for label, name in enumerate(classes) if label in wanted and label not in labels]
    if empty:
        note = f" once {left_out} bad rows/files were left out" if left_out else ""
        raise DataError(
            f"{where}: no usable images of class(es) {empty}{note}; add images or remove the "
            "class(es) from dataset.classes"
        )


def parse_pixel_rows(
    rows: Sequence[str | Buffer], count: int
) -> tuple[np.ndarray, list[str | None]]:
    """uint8 [rows, count] from space-separated pixel rows (text, or its ASCII bytes), and per
    row why it is bad (a bad row's pixels are zeros).

    A vectorised parse reads each block of rows; a block is gone through row by row only when
    that parse fails, so a valid file pays for one parse and every bad row gets its own reason.
    """
    images = np.zeros((len(rows), count), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(rows)
    for start in range(0, len(rows), _ROWS_PER_PARSE):
        block = rows[start : start + _ROWS_PER_PARSE]
        if _parse_block(block, count, images[start : start + len(block)]):
            continue
        for i, row in enumerate(block, start):
            parsed = _parse_row(row if isinstance(row, str) else str(row, "utf-8"), count)
            if isinstance(parsed, str):
                reasons[i] = parsed
            else:
                images[i] = parsed
    return images, reasons


def _parse_block(rows: Sequence[str | Buffer], count: int, out: np.ndarray) -> bool:
    """Fill `out` and return True when every row is `count` numbers 0..255 of 1-3 digits, one
    space apart; else return False (the rows then go one by one, for the exact reason).

    Why not np.fromstring: it takes ~2.3 s for FER2013's 83M numbers, this ~0.6 s. Each number
    is read from the three bytes before the space that ends it (ones, tens, hundreds), so a
    block needs a few whole-array numpy operations and no Python loop over numbers.
    """
    fields = [row.encode() if isinstance(row, str) else row for row in rows]
    # 4 spaces in front, so that the 4 bytes before every number's end exist; a space after
    # every row, so that every number ends with one.
    text = np.frombuffer(b" ".join([b"   ", *fields, b""]), dtype=np.uint8)
    digits = text - np.uint8(ord("0"))  # 0..9 for a digit; a space wraps round to 240
    ends = np.flatnonzero(digits[4:] == _SPACE)  # the space after each number
    row_ends = np.cumsum([len(field) + 1 for field in fields]) - 1
    if (
        ends.size != len(rows) * count
        or not np.array_equal(ends[count - 1 :: count], row_ends)  # `count` numbers per row
        or np.count_nonzero(digits[4:] > 9) != ends.size  # every other byte is a digit
    ):
        return False
    # digits[k:][ends] is the byte 4 - k places before the number's end (3: its last digit)
    ones, tens, hundreds, thousands = (digits[k:][ends].astype(np.uint16) for k in (3, 2, 1, 0))
    has_tens = tens <= 9
    has_hundreds = has_tens & (hundreds <= 9)
    values = ones + 10 * tens * has_tens + 100 * hundreds * has_hundreds
    if (ones > 9).any() or (has_hundreds & (thousands <= 9)).any() or (values > 255).any():
        return False  # an empty number (two spaces), 4+ digits or a value over 255
    out[:] = values.reshape(len(rows), count)
    return True


def _parse_row(row: str, count: int) -> np.ndarray | str:
    """One row's pixels, or the first thing wrong with it."""
    tokens = row.split()
    if not tokens:
        return "empty pixels field"
    if len(tokens) != count:
        return f"{len(tokens)} pixel values, expected {count}"
    try:
        values = np.fromstring(row, dtype=np.int64, sep=" ")
    except ValueError:
        token = next((t for t in tokens if not _is_integer(t)), None)
        return f"non-numeric pixel value {token!r}" if token else "unreadable pixel values"
    outside = np.flatnonzero((values < 0) | (values > 255))
    if outside.size:
        return f"pixel value {tokens[outside[0]]} out of range 0..255"
    return values


def _is_integer(token: str) -> bool:
    try:
        np.fromstring(token, dtype=np.int64, sep=" ")
    except ValueError:
        return False
    return True
