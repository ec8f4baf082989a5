"""What a run prints about itself: the network it trains, and at the end where its results are.

Lightning's own model summary lists every submodule of the LightningModule (the loss, the
metric state) with a column of FLOPs it cannot count; a researcher wants the network's layers
and parameters. At the end, the run's numbers and where to look: the run folder, the best
checkpoint and the MLflow run with the link that opens it.
"""

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import nn

from fer_lab.tracking.run_identity import run_url

log = logging.getLogger(__name__)


class NetworkSummary(pl.Callback):
    """The network's layers that hold parameters (to `depth` levels) with their counts, at
    fit start."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            log.info("%s", network_table(pl_module.net, self.depth))


def network_table(net: nn.Module, depth: int) -> str:
    rows = [
        (name, type(module).__name__, _parameters(module)) for name, module in _layers(net, depth)
    ]
    name_width = max([len(name) for name, _, _ in rows] + [5])
    kind_width = max([len(kind) for _, kind, _ in rows] + [4])
    lines = [f"{type(net).__name__}: {_parameters(net):,} parameters"]
    lines += [
        f"  {name:<{name_width}}  {kind:<{kind_width}}  {count:>11,}" for name, kind, count in rows
    ]
    return "\n".join(lines)


def _layers(module: nn.Module, depth: int, prefix: str = "") -> list[tuple[str, nn.Module]]:
    found = []
    for name, child in module.named_children():
        if _parameters(child) == 0:  # activations, pooling, dropout
            continue
        found.append((prefix + name, child))
        if depth > 1:
            found += _layers(child, depth - 1, f"{prefix}{name}.")
    return found


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def end_of_run(
    metrics: dict[str, float],
    best_epoch: int | None,
    epochs: int,
    seconds: float,
    output_dir: str,
    best_checkpoint: str | None,
    mlflow: dict[str, Any] | None,
) -> str:
    """About ten lines: the scores, the wall time and where the run's results are."""
    minutes, secs = divmod(round(seconds), 60)
    best = f"best epoch {best_epoch} of {epochs}, " if best_epoch else ""
    lines = [
        f"Trained and tested in {minutes}m{secs:02d}s: {best}" + _score(metrics, "val/acc_best")
    ]
    if "test/acc" in metrics:
        lines.append(
            f"Test (best checkpoint): {_score(metrics, 'test/acc', 'acc')}, "
            f"{_score(metrics, 'test/f1_macro', 'macro-F1')}"
        )
    lines.append(f"Run folder:      {output_dir}")
    if best_checkpoint:
        lines.append(f"Best checkpoint: {Path(best_checkpoint)}")
    if mlflow:
        lines.append(
            f"MLflow:          experiment {mlflow['experiment']!r}, run {mlflow['run_name']!r} "
            f"({mlflow['run_id']})"
        )
        lines.append(f"                 {_how_to_open(mlflow['tracking_uri'])}")
        url = run_url(mlflow["tracking_uri"], mlflow["experiment_id"], mlflow["run_id"])
        lines.append(f"                 {url}")
    return "\n".join(lines)


def _how_to_open(tracking_uri: str) -> str:
    """`make ui` serves ./mlflow.db; another local store needs its own UI command."""
    if tracking_uri.startswith("http"):
        return "open:"
    if Path(tracking_uri.removeprefix("sqlite:///")) == Path.cwd() / "mlflow.db":
        return "make ui, then open:"
    return (
        f"python -m fer_lab.tracking.ui_view --backend-store-uri {tracking_uri} --workers 1 "
        "--host 127.0.0.1 --port 5000, then open:"
    )


def _score(metrics: dict[str, float], key: str, label: str | None = None) -> str:
    value = metrics.get(key)
    return f"{label or key} {value:.4f}" if value is not None else f"{label or key} n/a"
