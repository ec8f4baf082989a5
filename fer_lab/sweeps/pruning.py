"""The trial side of an Optuna sweep: per-epoch pruning, the trial's heartbeat, and the
config it ran (kept in the study, so any worker can write `best.yaml`).

The sweeper (optuna_sweeper.py) asks Optuna for a trial and passes its id to the
training job as `sweep.trial_id`; the job reopens the study from the shared storage, so
pruning works whether trials run in-process or in other processes (joblib, other machines).
"""

import optuna
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from fer_lab.core.secrets import masked
from fer_lab.sweeps.heartbeats import KeepAlive
from fer_lab.sweeps.storage import retry_storage, shared_storage

CONFIG_ATTR = "fer_lab.config"  # the trial's config as YAML, with its group choices


class OptunaPruning(pl.Callback):
    """Reports `monitor` to the trial after each validation epoch; stops the run when the
    study's pruner says so (`pruned_at` then holds the epoch)."""

    def __init__(
        self, trial: optuna.trial.Trial, monitor: str, heartbeat_interval: float = 60
    ) -> None:
        self.trial = trial
        self.monitor = monitor
        self.heartbeat_interval = heartbeat_interval
        self.pruned_at: int | None = None
        self._heartbeat: KeepAlive | None = None

    @classmethod
    def for_current_job(cls, cfg: DictConfig) -> "OptunaPruning":
        """Rebuild the trial from the sweeper settings that travel with the job's config, and
        record in it the config this trial runs."""
        hydra = HydraConfig.get()
        sweeper = hydra.sweeper
        # pruner=null means no pruning; Optuna would otherwise fall back to a median rule.
        pruner = (
            instantiate(sweeper.pruner) if sweeper.get("pruner") else optuna.pruners.NopPruner()
        )
        heartbeat = {key: sweeper.get(key) for key in ("heartbeat_interval", "grace_period")}
        # Each storage call tries again while a database server restarts.
        storage = retry_storage(lambda: shared_storage(sweeper.storage, **heartbeat))
        study = retry_storage(
            lambda: optuna.load_study(study_name=sweeper.study_name, storage=storage, pruner=pruner)
        )
        trial = optuna.trial.Trial(study, cfg.sweep.trial_id)
        choices = hydra.runtime.choices
        config = {"model": choices.model, "dataset": choices.dataset}
        if rank_zero_only.rank == 0:
            recorded = masked({**config, "yaml": OmegaConf.to_yaml(cfg)})
            retry_storage(lambda: trial.set_user_attr(CONFIG_ATTR, recorded))
        return cls(trial, cfg.optimized_metric, sweeper.heartbeat_interval)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The trial's heartbeat while it trains, also where it runs apart from its sweeper (a
        SLURM job): a killed worker stops beating (fer_lab/sweeps/heartbeats.py)."""
        if trainer.is_global_zero:
            storage, trial_id = self.trial.study._storage, self.trial._trial_id
            self._heartbeat = KeepAlive(storage, [trial_id], self.heartbeat_interval)
            self._heartbeat.start()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        epoch = trainer.current_epoch
        prune = False
        if trainer.is_global_zero:  # a DDP trial reports once, and all its ranks stop together
            value = float(trainer.callback_metrics[self.monitor])
            retry_storage(lambda: self.trial.report(value, step=epoch))
            prune = retry_storage(self.trial.should_prune)
        if trainer.strategy.broadcast(prune):
            self.pruned_at = epoch
            trainer.should_stop = True
