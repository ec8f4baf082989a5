"""What `python -m fer_lab.visualize` does: look inside a trained network, as seeds 003 and 004 do.

Seed 004 shows a network's first-layer filters, seed 003 (appendix B) each conv layer's
feature maps for one face per expression. This draws both for any fer_lab checkpoint: the conv
layers are found generically (every `nn.Conv2d`, in the order the forward pass runs them), and
the PNGs go to the checkpoint's MLflow training run, beside its confusion matrices.
"""

import logging
from pathlib import Path

import torch
from matplotlib.figure import Figure

from fer_lab.core.errors import ConfigError
from fer_lab.inference.checkpoint import TrainedModel, load_trained
from fer_lab.inference.layer_figures import feature_map_figure, filters_figure
from fer_lab.inference.layer_outputs import conv_layers, dataset_samples, photo_sample, run_convs
from fer_lab.tracking.mlflow_store import prepare_tracking_store

log = logging.getLogger(__name__)


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
