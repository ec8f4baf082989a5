"""Confusion matrices as a CSV (rows true, columns predicted) and a PNG with the cells written
in, in counts or row-normalised; training runs and `eval` write theirs with this."""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fer_lab.tracking.figures import save_png


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Each true class's row as fractions (its recall on the diagonal); empty rows stay 0."""
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)


def write_confusion_matrix(
    matrix: np.ndarray, class_names: list[str], stem: Path, title: str, normalise: bool = False
) -> list[Path]:
    """`<stem>.csv` (rows true, columns predicted) and `<stem>.png` with the cells written in.

    `normalise` shows each row as fractions, so errors of rare classes stay visible.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    if normalise:
        matrix = row_normalised(matrix)
        subtitle, cell, scale_max = "row-normalised (recall on the diagonal)", "{:.2f}", 1.0
    else:
        accuracy = np.trace(matrix) / max(matrix.sum(), 1)
        subtitle, cell, scale_max = f"n={matrix.sum()}, accuracy={accuracy:.3f}", "{}", None
    frame = pd.DataFrame(matrix, index=class_names, columns=class_names)
    frame.index.name = "true\\predicted"
    csv_path = stem.with_suffix(".csv")
    frame.to_csv(csv_path, float_format="%.4f")

    size = max(5.0, 0.75 * len(class_names) + 2)
    figure = Figure(figsize=(size, size * 0.85))
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues", vmin=0, vmax=scale_max)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{title}\n{subtitle}")
    threshold = (scale_max or (matrix.max() if matrix.size else 0)) / 2
    for (row, col), value in np.ndenumerate(matrix):
        colour = "white" if value > threshold else "black"
        axes.text(col, row, cell.format(value), ha="center", va="center", color=colour)
    return [csv_path, save_png(figure, stem)]
