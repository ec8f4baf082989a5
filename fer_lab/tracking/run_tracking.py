"""MLflow glue: run names and tags, the logged config, run status, skipped data."""

import logging
import os
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger
from torch import nn

import fer_lab
from fer_lab.data.faces import BadItem
from fer_lab.models import count_parameters
from fer_lab.sweeps.parent_runs import PARENT_RUN_ENV, logs_to_mlflow
from fer_lab.tracking.mlflow_logger import FERMLflowLogger
from fer_lab.tracking.protocol import protocol_tags

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
