"""The logger of a training run: MLflow (named and tagged) or whatever `logger=` configures,
and the run's final status."""

from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger

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


def mark_run(logger: Logger, status: str, reason: str | None = None) -> None:
    """Set the MLflow run's status (RUNNING, KILLED, FAILED) with the reason as a tag."""
    if isinstance(logger, FERMLflowLogger):
        logger.set_status(status, reason)
