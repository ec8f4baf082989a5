"""What a training run records about its setup: the flattened config and parameter counts as
params, the config YAML and the list of skipped data as artifacts."""

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger
from torch import nn

from fer_lab.core.secrets import mask_secrets, masked
from fer_lab.data.faces import BadItem
from fer_lab.models import count_parameters
from fer_lab.tracking.mlflow_logger import FERMLflowLogger

log = logging.getLogger(__name__)


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
                value = str(OmegaConf.to_container(value, resolve=True)) if is_list else value
                flat[path] = masked(value)

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
    path.write_text(mask_secrets(OmegaConf.to_yaml(cfg, resolve=True)))
    if isinstance(logger, FERMLflowLogger):
        logger.upload_artifact(path)


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
