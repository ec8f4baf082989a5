"""The logger of a training run: MLflow (named and tagged) or whatever `logger=` configures,
and the run's final status."""

import logging
import time

from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from fer_lab.tracking import leaderboard
from fer_lab.tracking.mlflow_logger import FERMLflowLogger
from fer_lab.tracking.run_identity import LEADERBOARD_AT_TAG, logs_to_mlflow, run_identity


def build_logger(cfg: DictConfig, run_id: str | None = None) -> Logger:
    """The configured logger; a new MLflow run also gets a readable name and searchable tags,
    a resumed one (`run_id`) keeps what it has."""
    if not logs_to_mlflow(cfg):
        return instantiate(cfg.logger)
    extra = {}
    if "server_wait_s" in cfg.logger:  # a sweep's trial waits out an outage, a run fails fast
        extra["server_wait_s"] = cfg.logger.server_wait_s if cfg.get("sweep") else 0
    if run_id is not None:
        return instantiate(cfg.logger, run_id=run_id, **extra)
    name, tags = run_identity(cfg)
    return instantiate(cfg.logger, run_name=cfg.logger.get("run_name") or name, tags=tags, **extra)


log = logging.getLogger(__name__)
OPTUNA_TRIAL_TAG = "optuna.trial"
TRIAL_LEADERBOARD_INTERVAL_S = 60.0


@rank_zero_only
def update_parent_leaderboard(logger: Logger) -> None:
    """Rewrite the leaderboard of the grid or sweep this run belongs to, now that it ended.

    A grid's job rewrites it each time; an Optuna trial only when nobody has for
    TRIAL_LEADERBOARD_INTERVAL_S: a publish reads every child run, so one per trial would cost
    a sweep of n trials n² reads, and the sweep writes it once more when it ends. Best
    effort: a failure is reported, the run's own result stands."""
    if not isinstance(logger, FERMLflowLogger) or not logger.has_run:
        return
    client = logger.experiment
    try:
        tags = client.get_run(logger.run_id).data.tags
        parent = tags.get(leaderboard.PARENT_TAG)
        if not parent:
            return
        if OPTUNA_TRIAL_TAG in tags:
            written = float(client.get_run(parent).data.tags.get(LEADERBOARD_AT_TAG, 0))
            if time.time() - written < TRIAL_LEADERBOARD_INTERVAL_S:
                return
            client.set_tag(parent, LEADERBOARD_AT_TAG, f"{time.time():.0f}")
        leaderboard.publish(client, parent)
    except Exception as error:
        log.warning("The parent run's leaderboard was not updated: %s", error)


def mark_run(logger: Logger, status: str, reason: str | None = None) -> None:
    """Set the MLflow run's status (RUNNING, KILLED, FAILED) with the reason as a tag."""
    if isinstance(logger, FERMLflowLogger):
        logger.set_status(status, reason)
