"""Run figures beside the confusion matrices: learning curves, class histograms (seed 003,
figures 1-2) and the grid of the most confused pair's validation images (seed 003, figure 4;
fer_lab/training/misclassified.py finds them).

Each writer saves a PNG and the CSV it was drawn from, so the numbers stay comparable across
runs without reading pixels.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

CURVE_COLUMNS = ("train/loss", "val/loss", "train/acc", "val/acc")


def save_png(figure: Figure, stem: Path) -> Path:
    """`<stem>.png`, laid out and at the resolution every fer_lab figure uses."""
    figure.set_layout_engine("constrained")  # one layout pass while drawing; tight_layout adds one
    path = stem.with_suffix(".png")
    figure.savefig(path, dpi=120)
    return path


def write_learning_curves(
    history: dict[int, dict[str, float]], stem: Path, title: str
) -> list[Path]:
    """`<stem>.csv` (one row per epoch) and `<stem>.png`: loss and accuracy, train vs val.

    `history` maps epoch -> metric -> value; a metric an epoch lacks is left empty.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame.from_dict(history, orient="index").reindex(columns=list(CURVE_COLUMNS))
    frame = frame.sort_index().rename_axis("epoch")
    csv_path = stem.with_suffix(".csv")
    frame.to_csv(csv_path)

    figure = Figure(figsize=(10, 4))
    for axes, quantity in zip(figure.subplots(1, 2), ("loss", "acc"), strict=True):
        for split in ("train", "val"):
            series = frame[f"{split}/{quantity}"].dropna()
            axes.plot(series.index, series.to_numpy(), marker="o", markersize=3, label=split)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel("accuracy" if quantity == "acc" else "loss")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"{title}: learning curves")
    return [csv_path, save_png(figure, stem)]


def write_class_histogram(
    counts: dict[str, list[int]], class_names: list[str], stem: Path, title: str
) -> list[Path]:
    """`<stem>.csv` (rows classes, columns splits) and `<stem>.png`, one panel per split.

    Separate panels keep a small split readable next to a large one; imbalance shows within
    each, and similar shapes across panels mean similar class distributions.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(counts, index=class_names).rename_axis("class")
    csv_path = stem.with_suffix(".csv")
    frame.to_csv(csv_path)

    figure = Figure(figsize=(4 + 1.6 * len(counts) * max(1.0, len(class_names) / 5), 4))
    panels = figure.subplots(1, len(counts), squeeze=False)[0]
    for axes, split in zip(panels, counts, strict=True):
        bars = axes.bar(class_names, frame[split].to_numpy(), color="tab:blue")
        axes.bar_label(bars, fontsize=8)
        axes.set_title(f"{split} (n={frame[split].sum()})")
        axes.tick_params(axis="x", labelrotation=45)
        axes.set_ylabel("images")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(f"{title}: images per class")
    return [csv_path, save_png(figure, stem)]


@dataclass
class Misclassified:
    """Validation images of true class `true` predicted as `predicted`, with both softmax
    probabilities; `images` are greyscale [N, H, W] in [0, 1], ready to show."""

    true: int
    predicted: int
    indices: list[int]
    images: np.ndarray
    p_predicted: np.ndarray
    p_true: np.ndarray


def most_confused_pair(confusion: np.ndarray) -> tuple[int, int] | None:
    """(true, predicted) of the largest off-diagonal cell, or None without misclassifications."""
    errors = confusion.copy()
    np.fill_diagonal(errors, 0)
    if errors.max(initial=0) == 0:
        return None
    true, predicted = np.unravel_index(np.argmax(errors), errors.shape)
    return int(true), int(predicted)


def write_misclassified_grid(
    examples: Misclassified, class_names: list[str], total: int, stem: Path, title: str
) -> list[Path]:
    """`<stem>.csv` (validation index and probabilities per image) and `<stem>.png`, a grid
    titled with p(predicted) and p(true): a near tie means the model doubts (seed 003)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    true, predicted = class_names[examples.true], class_names[examples.predicted]
    frame = pd.DataFrame(
        {
            "val_index": examples.indices,
            "true": true,
            "predicted": predicted,
            "p_predicted": examples.p_predicted,
            "p_true": examples.p_true,
        }
    )
    csv_path = stem.with_suffix(".csv")
    frame.to_csv(csv_path, index=False)

    count = len(examples.indices)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    mosaic, origins = tile(examples.images, columns)
    figure = Figure(figsize=(2.2 * columns + 0.4, 2.7 * rows + 0.9))
    axes = figure.subplots()  # one for the whole grid: one per image made it 4x slower to draw
    axes.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes.set_axis_off()
    for (x, y), p_pred, p_true in zip(origins, examples.p_predicted, examples.p_true, strict=True):
        label = f"p({predicted})={p_pred:.2f}\np({true})={p_true:.2f}"
        axes.text(x, y - 1, label, ha="center", va="bottom", fontsize=8)
    figure.suptitle(f"{title}\n'{true}' predicted as '{predicted}': {count} of {total} shown")
    return [csv_path, save_png(figure, stem)]


def tile(images: np.ndarray, columns: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Greyscale [N, H, W] images in [0, 1] laid out `columns` to a row on white, with a band
    above each for its label; also each image's top centre (x, y) in the mosaic's pixels."""
    count, height, width = images.shape
    rows = math.ceil(count / columns)
    band, gap = math.ceil(height / 3), math.ceil(width / 10)
    mosaic = np.ones((rows * (band + height), columns * (width + gap) - gap))
    origins = []
    for index, image in enumerate(images):
        top = (index // columns) * (band + height) + band
        left = (index % columns) * (width + gap)
        mosaic[top : top + height, left : left + width] = image
        origins.append((left + (width - 1) / 2, top - 0.5))
    return mosaic, origins
