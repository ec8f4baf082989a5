"""The most confused pair's validation images at the best epoch (seed 003, figure 4): the best
checkpoint's weights reloaded beside the training module, run over the validation loader."""

import logging
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fer_lab.tracking.figures import Misclassified, most_confused_pair, write_misclassified_grid
from fer_lab.training.checkpoint_io import load_checkpoint

log = logging.getLogger(__name__)


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
