"""Figures of a network's insides, as seeds 003 and 004 draw them: first-layer filters and one
feature-map grid per conv layer."""

import math

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from fer_lab.inference.layer_outputs import ConvOutput, Sample


def filters_figure(conv: nn.Conv2d, name: str) -> Figure:
    """Each filter's kernel scaled to its own min..max (as seed 004): in colour for an RGB
    first layer, else the mean over the input channels (a grey input's only channel)."""
    weight = conv.weight.detach().float().cpu().numpy()  # out x in x kh x kw
    colour = weight.shape[1] == 3
    kernels = weight.transpose(0, 2, 3, 1) if colour else weight.mean(axis=1)
    flat = kernels.reshape(len(kernels), -1)
    scale = (-1,) + (1,) * (kernels.ndim - 1)
    low, span = flat.min(1).reshape(scale), np.ptp(flat, axis=1).reshape(scale)
    kernels = (kernels - low) / np.maximum(span, 1e-12)
    cols = math.ceil(math.sqrt(len(kernels)))
    rows = math.ceil(len(kernels) / cols)
    figure = Figure(figsize=(0.8 * cols + 0.4, 0.8 * rows + 0.9))
    for index, axes in enumerate(figure.subplots(rows, cols, squeeze=False).flat):
        axes.set_axis_off()
        if index < len(kernels):
            axes.imshow(kernels[index], cmap=None if colour else "gray", vmin=0, vmax=1)
            axes.set_title(str(index), fontsize=6)
    inputs = "RGB in colour" if colour else f"mean of {weight.shape[1]} input channels"
    inputs = "grey input" if weight.shape[1] == 1 else inputs
    figure.suptitle(
        f"{name}: {len(kernels)} first-layer filters {weight.shape[2]}x{weight.shape[3]}, "
        f"{inputs}\neach scaled to its own min..max",
        fontsize=8,
    )
    return figure


def feature_map_figure(output: ConvOutput, samples: list[Sample], labels: list[str]) -> Figure:
    """Rows: the inputs (with true and predicted class), then their first channels; one
    colour scale for the whole layer, so channels and classes compare (seed 003)."""
    maps = output.maps.float().cpu().numpy()
    shown = maps.shape[1]
    low, high = float(maps.min()), float(maps.max())
    figure = Figure(figsize=(0.9 * (shown + 1) + 0.8, 1.0 * len(samples) + 0.9))
    grid = figure.subplots(len(samples), shown + 1, squeeze=False)
    for row, (sample, label) in enumerate(zip(samples, labels, strict=True)):
        picture = sample.image[..., 0] if sample.image.shape[2] == 1 else sample.image
        grid[row, 0].imshow(picture, cmap="gray", vmin=0, vmax=255)
        grid[row, 0].set_ylabel(label, fontsize=7)
        for channel in range(shown):
            grid[row, channel + 1].imshow(maps[row, channel], vmin=low, vmax=high)
    for column, title in enumerate(["input", *(f"ch {c}" for c in range(shown))]):
        grid[0, column].set_title(title, fontsize=7)
    for axes in grid.flat:
        axes.set(xticks=[], yticks=[])
    conv = output.conv
    figure.suptitle(
        f"{output.name}: Conv2d {conv.in_channels}->{conv.out_channels} "
        f"{conv.kernel_size[0]}x{conv.kernel_size[1]}, output "
        f"{'x'.join(map(str, output.shape))}; channels 0-{shown - 1} of {output.shape[0]}\n"
        f"before the activation, colour scale {low:.3g}..{high:.3g}",
        fontsize=8,
    )
    return figure
