"""What a trained network's conv layers see: the images to show (one validation face per class,
or a photo) and every Conv2d's output for them, caught by forward hooks in forward order."""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from fer_lab.core.errors import ConfigError, FERLabError
from fer_lab.data.faces import image_problem, read_image, to_channels
from fer_lab.inference.checkpoint import TrainedModel

log = logging.getLogger(__name__)


@dataclass
class Sample:
    image: np.ndarray  # uint8 HxWxC in the model's channels, before resizing
    label: str  # "true: <class>" for a dataset image, the file name for a photo


@dataclass
class ConvOutput:
    name: str  # module name in the network, e.g. "layer1.0"
    conv: nn.Conv2d
    shape: tuple[int, ...]  # C x H x W of one image's output
    maps: torch.Tensor  # N x min(C, max_channels) x H x W


def dataset_samples(trained: TrainedModel) -> list[Sample]:
    """The first validation image of each class, from the dataset the checkpoint trained on."""
    config = trained.config.dataset
    try:
        val = instantiate(config).load().val
    except (FERLabError, InstantiationException, OSError) as error:
        # instantiate wraps what the loader's constructor raised
        cause = (error.__cause__ or error) if isinstance(error, InstantiationException) else error
        raise ConfigError(
            f"cannot load the checkpoint's dataset {config.get('name', '?')!r} to pick one "
            f"validation image per class ({cause}); pass image=PATH to show a photo instead"
        ) from error
    samples, channels = [], trained.channels
    for label, name in enumerate(trained.classes):
        found = np.flatnonzero(val.labels == label)
        if not len(found):
            log.warning("No validation image of class %r: its row is left out", name)
            continue
        source = val.images[found[0]]
        is_file = isinstance(source, Path)
        image = read_image(source, channels) if is_file else to_channels(source, channels)
        samples.append(Sample(image, f"true: {name}"))
    if not samples:
        raise ConfigError("the checkpoint's validation split is empty; pass image=PATH instead")
    return samples


def photo_sample(path: Path, channels: int) -> Sample:
    """A photo of any size and colour, in the model's channels (resized by the eval pipeline)."""
    problem = image_problem(path)
    if problem is not None:
        raise ConfigError(f"image={path}: {problem}; give a JPEG, PNG, BMP, TIFF or WebP photo")
    return Sample(read_image(path, channels), path.name)


def conv_layers(net: nn.Module) -> dict[nn.Conv2d, str]:
    """Every Conv2d of `net` with its module name; without any there is nothing to show."""
    convs = {m: name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise ConfigError(f"{type(net).__name__} has no Conv2d layers: no filters or feature maps")
    return convs


def run_convs(
    net: nn.Module, batch: torch.Tensor, max_channels: int
) -> tuple[torch.Tensor, list[ConvOutput]]:
    """The logits and each conv layer's output in forward order, caught by forward hooks.

    Outputs are copied in the hook: an in-place ReLU after the conv (torchvision's VGG16)
    would otherwise overwrite them with the activation.
    """
    convs = conv_layers(net)
    outputs: list[ConvOutput] = []

    def record(conv: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        maps = output[:, :max_channels].detach().clone()
        outputs.append(ConvOutput(convs[conv], conv, tuple(output.shape[1:]), maps))

    handles = [conv.register_forward_hook(record) for conv in convs]
    try:
        with torch.no_grad():
            logits = net(batch)
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs
