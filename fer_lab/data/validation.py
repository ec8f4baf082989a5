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

from fer_lab.data.faces import BadItem
from fer_lab.errors import DataError

log = logging.getLogger(__name__)

POLICIES = ("error", "skip")
MAX_LISTED = 20
# pandas reports each row with too many fields as one line of a ParserWarning.
_SKIPPED_LINE = re.compile(r"Skipping line (\d+): (.+)")
_ROWS_PER_PARSE = 2048
_OTHER_WHITESPACE = "\t\n\r\v\f"


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


def parse_pixel_rows(rows: Sequence[str], count: int) -> tuple[np.ndarray, list[str | None]]:
    """uint8 [good rows, count] from space-separated pixel rows, and per row why it is bad.

    A vectorised parse reads each block of rows; a block is gone through row by row only when
    that parse fails, so a valid file pays for one parse.
    """
    blocks: list[np.ndarray] = [np.empty((0, count), dtype=np.uint8)]
    reasons: list[str | None] = []
    for start in range(0, len(rows), _ROWS_PER_PARSE):
        block = rows[start : start + _ROWS_PER_PARSE]
        images = _parse_block(block, count)
        if images is None:
            parsed = [_parse_row(row, count) for row in block]
            images = np.array([p for p in parsed if not isinstance(p, str)], dtype=np.uint8)
            reasons += [p if isinstance(p, str) else None for p in parsed]
        else:
            reasons += [None] * len(block)
        blocks.append(images.reshape(-1, count))
    return np.concatenate(blocks), reasons


def _parse_block(rows: Sequence[str], count: int) -> np.ndarray | None:
    """The block's pixels when every row reads as `count` integers 0..255, else None.

    With `count - 1` spaces and no other whitespace a row holds at most `count` numbers, so
    one parse finding `count` per row on average means exactly `count` in each.
    """
    spaces = np.fromiter((row.count(" ") for row in rows), dtype=np.int64, count=len(rows))
    if (spaces != count - 1).any():
        return None
    joined = " ".join(rows)
    if any(char in joined for char in _OTHER_WHITESPACE):
        return None
    try:  # int64 saturates on overflow where smaller types wrap into 0..255
        values = np.fromstring(joined, dtype=np.int64, sep=" ")
    except ValueError:
        return None
    if values.size != len(rows) * count or values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(len(rows), count)


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
