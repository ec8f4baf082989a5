"""`python -m fer_lab.visualize`: look inside a trained network, as seeds 003 and 004 do.

Seed 004 shows a network's first-layer filters, seed 003 (appendix B) each conv layer's
feature maps for one face per expression. This draws both for any fer_lab checkpoint: the conv
layers are found generically (every `nn.Conv2d`, in the order the forward pass runs them), and
the PNGs go to the checkpoint's MLflow training run, beside its confusion matrices.
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import nn

from fer_lab.core.cli import run, user_errors_exit_2
from fer_lab.core.config import CONFIG_PATH
from fer_lab.core.errors import ConfigError, FERLabError
from fer_lab.data.faces import image_problem, read_image, to_channels
from fer_lab.inference.checkpoint import TrainedModel, load_trained
from fer_lab.tracking.stores import prepare_tracking_store

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


def training_run(trained: TrainedModel, tracking_uri: str) -> str | None:
    """The checkpoint's MLflow run if the store has it; None (PNG files only) otherwise."""
    run_id = trained.mlflow_run_id()
    if run_id is None:
        log.info("No MLflow run recorded for %s: the PNGs are written to disk only", trained.path)
        return None
    prepare_tracking_store(tracking_uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException:
        where = f"MLflow run {run_id} is not in {tracking_uri}"
        log.warning("%s (not the training store?): the PNGs are written to disk only", where)
        return None
    return run_id


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def visualize(
    ckpt_path: str | Path,
    output_dir: str | Path,
    image: str | Path | None = None,
    max_channels: int = 16,
    tracking_uri: str | None = None,
) -> list[Path]:
    """Write the first-layer filters and one feature-map PNG per conv layer to `output_dir`
    and, with a `tracking_uri`, log them to the checkpoint's run under `visualize/`
    (`visualize/<photo name>/` for an `image`, so photos do not replace each other)."""
    if max_channels < 1:
        raise ConfigError(f"max_channels must be at least 1, got {max_channels}")
    trained = load_trained(ckpt_path)
    conv_layers(trained.net)  # a net without any fails before its data is loaded
    run_id = training_run(trained, tracking_uri) if tracking_uri else None
    photo = Path(image).expanduser() if image else None
    samples = [photo_sample(photo, trained.channels)] if photo else dataset_samples(trained)
    transform = trained.eval_transform()
    batch = torch.stack([transform(image=sample.image)["image"].float() for sample in samples])
    logits, outputs = run_convs(trained.net, batch, max_channels)
    confidence, predicted = logits.softmax(1).max(1)
    labels = [
        f"{sample.label}\npred: {trained.classes[int(p)]} ({float(c):.0%})"
        for sample, p, c in zip(samples, predicted, confidence, strict=True)
    ]
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    first = outputs[0]
    paths = [_save(filters_figure(first.conv, first.name), folder / f"filters_{first.name}.png")]
    for index, output in enumerate(outputs, 1):
        figure = feature_map_figure(output, samples, labels)
        paths.append(_save(figure, folder / f"feature_maps_{index:02d}_{output.name}.png"))
    log.info("Wrote %d PNGs to %s", len(paths), folder)
    if run_id is not None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        artifact_path = f"visualize/{photo.stem}" if photo else "visualize"
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path)
        log.info("Logged them to MLflow run %s under %s/", run_id, artifact_path)
    return paths


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="visualize")
def main(cfg: DictConfig) -> None:
    with user_errors_exit_2():
        if cfg.ckpt_path is None:
            raise ConfigError("ckpt_path= is required: a .ckpt from a training run's checkpoints/")
        visualize(cfg.ckpt_path, cfg.output_dir, cfg.image, cfg.max_channels, cfg.tracking_uri)


if __name__ == "__main__":
    run(main)
