"""`python -m fer_lab.train`: compose the config, train, test, and return the optimised metric."""

import logging
import sys

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fer_lab.config import CONFIG_PATH
from fer_lab.errors import FERLabError
from fer_lab.module import FERLitModule
from fer_lab.tracking import build_logger, log_run_config

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Fit on train, select on val, test the best checkpoint once; return `cfg.optimized_metric`."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    net = instantiate(cfg.model)
    module = FERLitModule(
        net=net,
        loss=instantiate(cfg.loss, class_counts=datamodule.class_counts("train")),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        class_names=datamodule.classes,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    logger = build_logger(cfg)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    log_run_config(logger, cfg, net)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if cfg.optimized_metric not in trainer.callback_metrics:
        raise FERLabError(
            f"optimized_metric={cfg.optimized_metric!r} was not logged; "
            f"logged metrics: {sorted(trainer.callback_metrics)}"
        )
    score = float(trainer.callback_metrics[cfg.optimized_metric])
    if cfg.test:
        best = "best" if trainer.checkpoint_callback else None
        trainer.test(module, datamodule=datamodule, ckpt_path=best)
    log.info("%s = %.4f", cfg.optimized_metric, score)
    return score


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float:
    if cfg.get("print_config"):
        log.info("Config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        return train(cfg)
    except (FERLabError, InstantiationException) as error:
        cause = error if isinstance(error, FERLabError) else error.__cause__
        if not isinstance(cause, FERLabError):
            raise
        log.error("%s", cause)
        sys.exit(2)


if __name__ == "__main__":
    main()
