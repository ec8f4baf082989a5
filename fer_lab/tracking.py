"""MLflow glue: run names and tags, the logged config, and confusion-matrix artifacts."""

import logging
import os
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger
from torch import nn

import fer_lab
from fer_lab.data.faces import BadItem
from fer_lab.figures import write_class_histogram, write_learning_curves, write_most_confused
from fer_lab.mlflow_logger import FERMLflowLogger
from fer_lab.models import count_parameters
from fer_lab.module import SPLITS, FERLitModule
from fer_lab.protocol import protocol_tags
from fer_lab.sweep_runs import PARENT_RUN_ENV, logs_to_mlflow

log = logging.getLogger(__name__)


def git_commit() -> str:
    """The commit of the fer_lab checkout that runs, or 'unknown' outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(fer_lab.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def describe_hardware() -> str:
    """The device a run trains on, for results tables: GPU name, or CPU cores and machine."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU {os.cpu_count()} cores {platform.machine()}"


def build_logger(cfg: DictConfig, run_id: str | None = None) -> Logger:
    """The configured logger; a new MLflow run also gets a readable name and searchable tags,
    a resumed one (`run_id`) keeps what it has."""
    if not logs_to_mlflow(cfg):
        return instantiate(cfg.logger)
    if run_id is not None:
        return instantiate(cfg.logger, run_id=run_id)
    name, tags = run_identity(cfg)
    return instantiate(cfg.logger, run_name=cfg.logger.get("run_name") or name, tags=tags)


def mark_run(logger: Logger, status: str, reason: str | None = None) -> None:
    """Set the MLflow run's status (RUNNING, KILLED, FAILED) with the reason as a tag."""
    if isinstance(logger, FERMLflowLogger):
        logger.set_status(status, reason)


def log_skipped_data(logger: Logger, skipped: list[BadItem], output_dir: str) -> None:
    """The rows and images `dataset.on_bad_data=skip` left out: a CSV artifact and a count."""
    logger.log_hyperparams({"data/skipped": len(skipped)})
    if not skipped:
        return
    path = Path(output_dir) / "artifacts" / "skipped_data.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([asdict(item) for item in skipped]).to_csv(path, index=False)
    log.warning("Skipped %d bad rows/images; the list is in %s", len(skipped), path)
    if isinstance(logger, FERMLflowLogger):
        logger.upload_artifact(path)


def run_identity(cfg: DictConfig) -> tuple[str, dict[str, str]]:
    """Run name (model plus the overrides that change the experiment) and tags for MLflow.

    Paths and logger settings are left out of the name (they stay in `hydra_overrides`), so
    names read like "dachapally optimizer.lr=0.01" in the runs list.
    """
    hydra_cfg = HydraConfig.get()
    sweep = cfg.get("sweep") or {}
    words = [cfg.names.model]
    if sweep.get("trial_number") is not None:
        words.append(f"trial {sweep.trial_number}")
    words += [o for o in hydra_cfg.overrides.task if not _is_bookkeeping(o.split("=", 1)[0])]
    tags = {
        "dataset": str(cfg.names.dataset),
        "model": str(cfg.names.model),
        "mlflow.source.git.commit": git_commit(),
        "fer_lab_version": fer_lab.__version__,
        "hydra_overrides": " ".join(hydra_cfg.overrides.task) or "(none)",
        "output_dir": hydra_cfg.runtime.output_dir,
        "hardware": describe_hardware(),
    }
    tags.update(protocol_tags(cfg))
    if cfg.get("experiment_tag"):
        tags["experiment"] = str(cfg.experiment_tag)
    parent = sweep.get("parent_run_id") or os.environ.get(PARENT_RUN_ENV)
    if parent:
        tags["mlflow.parentRunId"] = str(parent)
    if sweep.get("trial_number") is not None:
        tags["optuna.trial"] = str(sweep.trial_number)
        tags["optuna.study"] = str(hydra_cfg.sweeper.study_name)
    return " ".join(words)[:250], tags


def _is_bookkeeping(key: str) -> bool:
    key = key.lstrip("+~")
    return key in ("model", "test", "sweep", "hparams_search", "data.num_workers") or (
        key.endswith("path") or key.startswith(("paths.", "logger", "hydra."))
    )


def flatten_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as `a/b/c: value`, skipping nodes that only repeat another node."""
    flat: dict[str, Any] = {}

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node:
            path = f"{prefix}{key}"
            if OmegaConf.is_interpolation(node, key) and OmegaConf.is_config(node[key]):
                continue
            value = node[key]
            if isinstance(value, DictConfig):
                walk(value, f"{path}/")
            else:
                is_list = OmegaConf.is_config(value)
                flat[path] = str(OmegaConf.to_container(value, resolve=True)) if is_list else value

    walk(cfg, "")
    return flat


def log_run_config(logger: Logger, cfg: DictConfig, net: nn.Module) -> None:
    """Params: the flattened config and exact parameter counts; artifact: the config YAML."""
    total, trainable = count_parameters(net)
    logger.log_hyperparams(
        {**flatten_config(cfg), "model/params_total": total, "model/params_trainable": trainable}
    )
    path = Path(cfg.paths.output_dir) / "artifacts" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if isinstance(logger, FERMLflowLogger):
        logger.upload_artifact(path)


def write_confusion_matrix(
    matrix: np.ndarray, class_names: list[str], stem: Path, title: str
) -> list[Path]:
    """`<stem>.csv` (rows true, columns predicted) and `<stem>.png` with counts in the cells."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(matrix, index=class_names, columns=class_names)
    frame.index.name = "true\\predicted"
    csv_path = stem.with_suffix(".csv")
    frame.to_csv(csv_path)

    size = max(5.0, 0.75 * len(class_names) + 2)
    figure = Figure(figsize=(size, size * 0.85))
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    axes.set_title(f"{title}\nn={matrix.sum()}, accuracy={accuracy:.3f}")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > threshold else "black"
        axes.text(col, row, str(count), ha="center", va="center", color=colour)
    figure.tight_layout()
    png_path = stem.with_suffix(".png")
    figure.savefig(png_path, dpi=120)
    return [csv_path, png_path]


class RunArtifacts(pl.Callback):
    """Writes confusion matrices (best validation epoch, test), class histograms, learning
    curves and the most confused validation images, and uploads them with the best checkpoint
    to MLflow; with other loggers the files stay in `output_dir`.

    Per-epoch losses and accuracies live in this callback's state, which Lightning saves in
    every checkpoint, so a resumed run's curves have all its epochs, whatever the logger.
    """

    def __init__(self, output_dir: str, title: str = "", max_misclassified: int = 16) -> None:
        self.output_dir = Path(output_dir) / "artifacts"
        self.title = title
        self.max_misclassified = max_misclassified
        self.history: dict[int, dict[str, float]] = {}  # epoch -> train/val loss and acc

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict["history"]

    def _record(self, trainer: pl.Trainer, split: str) -> None:
        row = self.history.setdefault(trainer.current_epoch, {})
        for name in (f"{split}/loss", f"{split}/acc"):
            if name in trainer.callback_metrics:
                row[name] = float(trainer.callback_metrics[name])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: FERLitModule) -> None:
        self._record(trainer, "train")  # Lightning saves checkpoints after this: last.ckpt has it

    def on_validation_end(self, trainer: pl.Trainer, pl_module: FERLitModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "val")

    def _upload(self, trainer: pl.Trainer, paths: list[Path], artifact_path: str) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, FERMLflowLogger):
                for path in paths:
                    logger.upload_artifact(path, artifact_path)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: FERLitModule) -> None:
        if trainer.is_global_zero:
            counts = {split: trainer.datamodule.class_counts(split) for split in SPLITS}
            stem = self.output_dir / "class_histogram"
            paths = write_class_histogram(counts, pl_module.class_names, stem, self.title)
            self._upload(trainer, paths, "figures")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: FERLitModule) -> None:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            self._upload(trainer, [Path(best)], "checkpoints")
        if not trainer.is_global_zero:
            return
        paths = write_learning_curves(self.history, self.output_dir / "learning_curves", self.title)
        self._upload(trainer, paths, "figures")
        if pl_module.best_val_confusion is None:
            return
        confusion = pl_module.best_val_confusion.numpy()
        title = f"{self.title}: validation, best epoch"
        stem = self.output_dir / "confusion_matrix_val_best"
        paths = write_confusion_matrix(confusion, pl_module.class_names, stem, title)
        self._upload(trainer, paths, "confusion_matrices")
        if best:  # on the root device: after fit, Lightning has moved the module to the CPU
            paths = write_most_confused(
                pl_module.net,
                best,
                trainer.datamodule.val_dataloader(),
                confusion,
                pl_module.class_names,
                self.output_dir / "misclassified_val_best",
                title,
                self.max_misclassified,
                trainer.strategy.root_device,
            )
            self._upload(trainer, paths, "figures")

    def on_test_end(self, trainer: pl.Trainer, pl_module: FERLitModule) -> None:
        if pl_module.test_confusion is not None:
            paths = write_confusion_matrix(
                pl_module.test_confusion.numpy(),
                pl_module.class_names,
                self.output_dir / "confusion_matrix_test",
                f"{self.title}: test",
            )
            self._upload(trainer, paths, "confusion_matrices")
