"""Run figures beside the confusion matrices: learning curves, class histograms (seed 003,
figures 1-2) and the grid of the most confused pair's validation images (seed 003, figure 4;
fer_lab/training/misclassified.py finds them); and a leaderboard's charts, its ranking and its
runs' validation curves (fer_lab/tracking/leaderboard.py writes the table beside them).

Each run figure is saved with the CSV it was drawn from, so the numbers stay comparable across
runs without reading pixels.
"""

import itertools
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator, MaxNLocator, PercentFormatter

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

    `history` maps Lightning's epoch (from 0, as the CSV keeps it) -> metric -> value; a metric
    an epoch lacks is left empty. The PNG counts epochs from 1, as the run's summary does.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame.from_dict(history, orient="index").reindex(columns=list(CURVE_COLUMNS))
    frame = frame.sort_index().rename_axis("epoch")
    csv_path = stem.with_suffix(".csv")
    frame.to_csv(csv_path)

    figure = Figure(figsize=(10, 4.3), layout="constrained")
    for axes, quantity in zip(figure.subplots(1, 2), ("loss", "acc"), strict=True):
        for split in ("train", "val"):
            series = frame[f"{split}/{quantity}"].dropna()
            axes.plot(series.index + 1, series.to_numpy(), marker="o", markersize=3, label=split)
        set_epoch_axis(axes, int(frame.index.max()) + 1 if len(frame) else 1)
        axes.set_ylabel("accuracy" if quantity == "acc" else "loss")
        axes.grid(alpha=0.3)
    # One legend for both panels, below them: inside, it would hide points.
    figure.legend(*axes.get_legend_handles_labels(), loc="outside lower center", ncols=2)
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


RANKED_BY = "val/acc_best"
LABEL_CHARS = 48  # a run's label in a chart; its full name is in leaderboard.md, by rank
RANKING_ROWS = 30
CURVES_SHOWN = 20
DATA_WIDTH_IN = 5.5  # the data area's width; the figure grows beside it for labels and legend


class RankedRun(Protocol):
    """A leaderboard row as its charts read it (fer_lab.tracking.leaderboard.Entry is one)."""

    name: str
    val_acc_best: float
    test_acc: float
    val_curve: list[float]  # val/acc of epochs 1, 2, ...


def middle_ellipsis(text: str, limit: int = LABEL_CHARS) -> str:
    """`text` cut in its middle to `limit` characters: its start (the model or first override)
    and its end (the last value) are what tell runs apart."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head) :]}"


def ranked_label(rank: int, name: str) -> str:
    """A chart's label for a run: its rank, to look it up in the table, and its short name."""
    return f"{rank}. {middle_ellipsis(name)}"


def epoch_ticks(epochs: int, most: int = 10) -> list[int]:
    """Epoch 1, then multiples of a round step (1, 2, 5, 10, 20, ...) up to `epochs`, at most
    about `most` of them: every epoch while they fit."""
    round_steps = (m * 10**k for k in itertools.count() for m in (1, 2, 5))
    step = next(s for s in round_steps if epochs <= most * s)
    return sorted({1, *range(step, epochs + 1, step)})


def set_epoch_axis(axes: Axes, epochs: int) -> None:
    """An integer x axis counting epochs 1..`epochs`, half an epoch of margin either side, so
    one epoch shows as epoch 1, not as a span around 0."""
    axes.set_xlim(0.5, max(epochs, 1) + 0.5)
    axes.xaxis.set_major_locator(FixedLocator(epoch_ticks(max(epochs, 1))))
    axes.set_xlabel("epoch")


def ranking_figure(runs: Sequence[RankedRun], title: str) -> Figure:
    """Horizontal bars of `val/acc_best` (best on top) with `test/acc` as dots, for the first
    RANKING_ROWS of `runs` (in rank order) that have a `val/acc_best`."""
    shown = [(rank, run) for rank, run in enumerate(runs, 1) if not math.isnan(run.val_acc_best)]
    shown = shown[:RANKING_ROWS]
    height = 1.8 + 0.32 * max(len(shown), 1)
    figure = Figure(figsize=(DATA_WIDTH_IN, height), layout="constrained")
    axes = figure.subplots()
    rows = list(range(len(shown)))
    best = [run.val_acc_best for _, run in shown]
    bars = axes.barh(rows, best, color="tab:blue", label=RANKED_BY)
    axes.bar_label(bars, [f"{v:.1%}" for v in best], label_type="center", color="w", fontsize=8)
    tests = [run.test_acc for _, run in shown]
    axes.plot(tests, rows, "o", color="tab:orange", label="test/acc", clip_on=False)
    axes.set_yticks(rows, [ranked_label(rank, run.name) for rank, run in shown])
    axes.set_ylim(max(len(shown), 1) - 0.5, -0.5)  # rank 1 on top
    axes.set_xlim(0, 1)
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel("accuracy")
    axes.grid(axis="x", alpha=0.3)
    if not shown:
        axes.text(0.5, 0.5, f"no run has {RANKED_BY} yet", ha="center", transform=axes.transAxes)
    else:
        figure.legend(loc="outside lower center", ncols=2, frameon=False)
    figure.set_figwidth(DATA_WIDTH_IN + 0.5 + _widest_inches(axes.get_yticklabels()))
    _wrap_title(figure.suptitle(f"{title}: ranking"), 0.95 * figure.get_figwidth())
    return figure


def val_curves_figure(runs: Sequence[RankedRun], title: str) -> Figure:
    """Validation accuracy per epoch of the first CURVES_SHOWN of `runs` (in rank order) that
    have one, the legend below the data."""
    drawn = [(rank, run) for rank, run in enumerate(runs, 1) if run.val_curve][:CURVES_SHOWN]
    figure = Figure(figsize=(DATA_WIDTH_IN + 1.0, 4.5), layout="constrained")
    axes = figure.subplots()
    for index, (rank, run) in enumerate(drawn):
        axes.plot(
            range(1, len(run.val_curve) + 1),
            run.val_curve,
            marker="o",
            markersize=4,
            linestyle=("-", "--")[index // 10],  # the colour cycle repeats after 10
            label=ranked_label(rank, run.name),
        )
    set_epoch_axis(axes, max((len(run.val_curve) for _, run in drawn), default=1))
    axes.set_ylabel("val/acc")
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.grid(alpha=0.3)
    if not drawn:
        axes.text(0.5, 0.5, "no validation epoch yet", ha="center", transform=axes.transAxes)
    else:
        # Below the data in two columns, or one where two would be wider than the figure.
        for columns in (2, 1):
            legend = figure.legend(
                loc="outside lower center", ncols=columns, fontsize="small", frameon=False
            )
            width, height = (v / figure.dpi for v in legend.get_window_extent().size)
            if columns == 1 or width <= figure.get_figwidth():
                break
            legend.remove()
        figure.set_size_inches(max(figure.get_figwidth(), width + 0.2), 4.5 + height)
    _wrap_title(figure.suptitle(f"{title}: validation accuracy"), 0.95 * figure.get_figwidth())
    return figure


def write_ranking(runs: Sequence[RankedRun], stem: Path, title: str) -> Path:
    """`<stem>.png`: the ranking chart of a leaderboard's runs, given in rank order."""
    return save_png(ranking_figure(runs, title), stem)


def write_val_curves(runs: Sequence[RankedRun], stem: Path, title: str) -> Path:
    """`<stem>.png`: the validation curves of a leaderboard's runs, given in rank order."""
    return save_png(val_curves_figure(runs, title), stem)


def _widest_inches(texts: Sequence[Text]) -> float:
    return max((t.get_window_extent().width / t.figure.dpi for t in texts), default=0.0)


def _wrap_title(title: Text, inches: float) -> None:
    """`title` wrapped to `inches`, its figure taller by the extra lines: a long parent-run
    name is wrapped, not cut."""
    figure = title.get_figure(root=True)
    width = title.get_window_extent().width / figure.dpi
    if width > inches:
        text = title.get_text()
        lines = textwrap.wrap(text, max(12, int(len(text) * inches / width)))
        title.set_text("\n".join(lines))
        figure.set_figheight(figure.get_figheight() + 0.25 * (len(lines) - 1))
