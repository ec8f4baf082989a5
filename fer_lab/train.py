"""`python -m fer_lab.train`: compose the config, train, test, and return the optimised metric.

This module imports only what the checks need; Lightning and the training code load after
them, so a mistyped value or an unreachable tracking server is reported in a second or two,
not after ten seconds of imports.
"""

import logging
import os

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fer_lab.core.cli import run, user_errors_exit_2
from fer_lab.core.config import CONFIG_PATH
from fer_lab.core.config_checks import check_launch, check_speed, check_values
from fer_lab.core.process import heavy_imports
from fer_lab.tracking.mlflow_store import prepare_tracking_store
from hydra_plugins.fer_lab_optuna.sweeper import OptunaSweeper

log = logging.getLogger(__name__)

# Hydra finds plugins by scanning the hydra_plugins namespace, which setuptools' editable
# installs hide; registering here makes `hydra/sweeper: optuna` work in both install modes.
Plugins.instance().register(OptunaSweeper)


def preflight(cfg: DictConfig) -> None:
    """What can fail before any data or weights load: config values, the tracking store."""
    check_values(cfg)
    check_speed(cfg)
    check_launch(cfg, HydraConfig.get().mode == RunMode.MULTIRUN, os.environ)
    if cfg.logger.get("tracking_uri"):
        prepare_tracking_store(cfg.logger.tracking_uri)


def train(cfg: DictConfig) -> float:
    """Check the config, then fit, select on val and test once; return the optimised metric."""
    preflight(cfg)
    with heavy_imports():  # Lightning loads only for a config that passed
        from fer_lab.training.job import fit_and_test

    return fit_and_test(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float:
    if cfg.get("print_config"):
        log.info("Config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    with user_errors_exit_2():
        return train(cfg)


if __name__ == "__main__":
    run(main)
