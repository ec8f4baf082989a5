"""The logger of a training run: MLflow (named and tagged) or whatever `logger=` configures,
and the run's final status."""

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from fer_lab.tracking import leaderboard
from fer_lab.tracking.mlflow_logger import FERMLflowLogger
from fer_lab.tracking.run_identity import logs_to_mlflow, run_identity


def build_logger(cfg: DictConfig, run_id: str | None = None) -> Logger:
    """The configured logger; a new MLflow run also gets a readable name and searchable tags,
    a resumed one (`run_id`) keeps what it has."""
    if not logs_to_mlflow(cfg):
        return instantiate(cfg.logger)
    if run_id is not None:
        return instantiate(cfg.logger, run_id=run_id)
    name, tags = run_identity(cfg)
    return instantiate(cfg.logger, run_name=cfg.logger.get("run_name") or name, tags=tags)


log = logging.getLogger(__name__)


@rank_zero_only
def update_parent_leaderboard(logger: Logger) -> None:
    """Rewrite the leaderboard of the grid or sweep this run belongs to, now that it ended.
    Best effort: a failure is reported, the run's own result stands."""
    if not isinstance(logger, FERMLflowLogger) or not logger.has_run:
        return
    client = logger.experiment
    try:
        parent = client.get_run(logger.run_id).data.tags.get(leaderboard.PARENT_TAG)
        if parent:
            leaderboard.publish(client, parent)
    except Exception as error:
        log.warning("The parent run's leaderboard was not updated: %s", error)


def mark_run(logger: Logger, status: str, reason: str | None = None) -> None:
    """Set the MLflow run's status (RUNNING, KILLED, FAILED) with the reason as a tag."""
    if isinstance(logger, FERMLflowLogger):
        logger.set_status(status, reason)
