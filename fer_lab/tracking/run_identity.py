"""A training run's identity in MLflow: its name, its tags, its parent run.

Light to import (no torch, no Lightning): Hydra's multirun callback reads it on every start.
"""

import os

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import fer_lab
from fer_lab.core.secrets import mask_secrets
from fer_lab.tracking.protocol import protocol_tags
from fer_lab.tracking.provenance import describe_hardware, git_commit
from fer_lab.tracking.run_names import child_name

# How a grid multirun's parent run id reaches its jobs (in-process or in launcher workers).
PARENT_RUN_ENV = "FER_LAB_PARENT_RUN_ID"
# On a parent run: the name of its study or grid.
SWEEP_TAG = "fer_lab.sweep"
# On a run that ended KILLED or FAILED: why.
FAILURE_REASON_TAG = "fer_lab.failure_reason"
# On a sweep's parent run: when its leaderboard was last written (epoch seconds).
LEADERBOARD_AT_TAG = "fer_lab.leaderboard_at"
# A key the run is created with: a creation retried after a lost response finds the run
# the first attempt made instead of making a second.
CREATION_KEY_TAG = "fer_lab.creation_key"


LOCAL_UI = "http://127.0.0.1:5000"  # what `make ui` serves (Makefile)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run: on the tracking server, or on `make ui` for a local store."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def logs_to_mlflow(config: DictConfig) -> bool:
    """Whether the composed config's `logger` logs to MLflow: it names a tracking store.

    Read from the config, not the logger class, so Hydra's callback can check it without
    importing Lightning on every start."""
    return config.logger.get("tracking_uri") is not None


def run_identity(cfg: DictConfig) -> tuple[str, dict[str, str]]:
    """Run name (model plus the overrides that change the experiment) and tags for MLflow.

    Paths and logger settings are left out of the name (they stay in `hydra_overrides`), so
    names read like "dachapally optimizer.lr=0.01" in the runs list; in a multirun, what
    differs between the children ("nouri", "lr=0.003 batch_size=64", fer_lab/tracking/
    run_names.py).
    """
    hydra_cfg = HydraConfig.get()
    sweep = cfg.get("sweep") or {}
    words = [cfg.names.model]
    if sweep.get("trial_number") is not None:
        words.append(f"trial {sweep.trial_number}")
    overrides = [mask_secrets(o) for o in hydra_cfg.overrides.task]
    words += [o for o in overrides if not _is_bookkeeping(o.split("=", 1)[0])]
    # A grid's or sweep's child: named by what differs from its siblings (the parent run
    # holds what they share).
    if hydra_cfg.mode == RunMode.MULTIRUN:
        space = (hydra_cfg.sweeper.get("params") or {}).keys()
        words = [child_name(overrides, space) or " ".join(words)]
    tags = {
        "dataset": str(cfg.names.dataset),
        "model": str(cfg.names.model),
        "mlflow.source.git.commit": git_commit(),
        "fer_lab_version": fer_lab.__version__,
        "hydra_overrides": " ".join(overrides) or "(none)",
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
