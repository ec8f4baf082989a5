"""Run figures beside the confusion matrices: learning curves, class histograms (seed 003,
figures 1-2) and the most confused pair's validation images (seed 003, figure 4).

Each writer saves a PNG and the CSV it was drawn from, so the numbers stay comparable across
runs without reading pixels.
"""

import logging
import math
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn
from torch.utils.data import DataLoader

from fer_lab.training.run_control import load_checkpoint

log = logging.getLogger(__name__)

CURVE_COLUMNS = ("train/loss", "val/loss", "train/acc", "val/acc")


def save_png(figure: Figure, stem: Path) -> Path:
    """`<stem>.png`, laid out and at the resolution every fer_lab figure uses."""
    figure.tight_layout()
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


def net_from_checkpoint(net: nn.Module, checkpoint: str | Path, device: torch.device) -> nn.Module:
    """A copy of `net` with a Lightning checkpoint's `net.*` weights, in eval mode: the training
    module (and what `trainer.test` sees) keeps its own weights."""
    state = load_checkpoint(checkpoint, mmap=True)
    weights = {
        key.removeprefix("net."): value
        for key, value in state["state_dict"].items()
        if key.startswith("net.")
    }
    copy = deepcopy(net)
    copy.load_state_dict(weights)
    return copy.to(device).eval()


@torch.inference_mode()
def find_misclassified(
    net: nn.Module, loader: DataLoader, true: int, predicted: int, limit: int, device: torch.device
) -> Misclassified:
    """Up to `limit` images of class `true` that `net` predicts as `predicted`, in loader order.

    Images are kept as the network saw them (resized, no augmentation), channels averaged to
    grey and stretched per image to [0, 1]: every preprocess here (/255, standardise, min-max)
    is an affine map of the pixels, so this shows the face without needing to know which.
    """
    indices: list[int] = []
    images: list[torch.Tensor] = []
    probabilities: list[torch.Tensor] = []
    offset = 0
    for inputs, labels in loader:
        # The loader may hand over tensors on the GPU (the on-device path) or on the CPU: all
        # selection happens on the network's device, and only the few hits go to the CPU.
        inputs, labels = inputs.to(device), labels.to(device)
        p = net(inputs).float().softmax(dim=1)
        hits = torch.nonzero((labels == true) & (p.argmax(dim=1) == predicted)).flatten()
        hits = hits[: limit - len(indices)]
        indices += (hits + offset).tolist()
        images.append(inputs[hits].float().mean(dim=1).cpu())
        probabilities.append(p[hits].cpu())
        offset += len(labels)
        if len(indices) >= limit:
            break
    grey = torch.cat(images)
    low = grey.amin(dim=(1, 2), keepdim=True)
    high = grey.amax(dim=(1, 2), keepdim=True)
    shown = ((grey - low) / (high - low).clamp_min(1e-8)).numpy()
    p = torch.cat(probabilities)
    return Misclassified(
        true, predicted, indices, shown, p[:, predicted].numpy(), p[:, true].numpy()
    )


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
    figure = Figure(figsize=(2.2 * columns + 0.4, 2.7 * rows + 0.9))
    grid = list(figure.subplots(rows, columns, squeeze=False).flat)
    for axes in grid:
        axes.set_axis_off()
    for axes, image, p_pred, p_true in zip(
        grid[:count], examples.images, examples.p_predicted, examples.p_true, strict=True
    ):
        axes.imshow(image, cmap="gray", vmin=0, vmax=1)
        axes.set_title(f"p({predicted})={p_pred:.2f}\np({true})={p_true:.2f}", fontsize=8)
    figure.suptitle(f"{title}\n'{true}' predicted as '{predicted}': {count} of {total} shown")
    return [csv_path, save_png(figure, stem)]


def write_most_confused(
    net: nn.Module,
    checkpoint: str | Path,
    loader: DataLoader,
    confusion: np.ndarray,
    class_names: list[str],
    stem: Path,
    title: str,
    limit: int = 16,
    device: torch.device | str = "cpu",
) -> list[Path]:
    """The grid for the largest off-diagonal cell of `confusion`, with `checkpoint`'s weights
    (the epoch `confusion` comes from); [] and a log line when there is nothing to show."""
    pair = most_confused_pair(confusion)
    if pair is None:
        log.info("No misclassified validation images at the best epoch: no misclassified grid")
        return []
    net = net_from_checkpoint(net, checkpoint, torch.device(device))
    examples = find_misclassified(net, loader, *pair, limit, torch.device(device))
    if not examples.indices:
        true, predicted = (class_names[i] for i in pair)
        log.info("The best checkpoint finds no %s predicted as %s: no grid", true, predicted)
        return []
    return write_misclassified_grid(examples, class_names, int(confusion[pair]), stem, title)
