"""The trial side of an Optuna sweep: per-epoch pruning.

The sweeper (optuna_sweeper.py) asks Optuna for a trial and passes its id to the
training job as `sweep.trial_id`; the job reopens the study from the shared storage, so
pruning works whether trials run in-process or in other processes (joblib, other machines).
"""

import optuna
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from fer_lab.sweeps.storage import open_storage


class OptunaPruning(pl.Callback):
    """Reports `monitor` to the trial after each validation epoch; stops the run when the
    study's pruner says so (`pruned_at` then holds the epoch)."""

    def __init__(self, trial: optuna.trial.Trial, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None

    @classmethod
    def for_current_job(cls, trial_id: int, monitor: str) -> "OptunaPruning":
        """Rebuild the trial from the sweeper settings that travel with the job's config."""
        sweeper = HydraConfig.get().sweeper
        # pruner=null means no pruning; Optuna would otherwise fall back to a median rule.
        pruner = (
            instantiate(sweeper.pruner) if sweeper.get("pruner") else optuna.pruners.NopPruner()
        )
        study = optuna.load_study(
            study_name=sweeper.study_name, storage=open_storage(sweeper.storage), pruner=pruner
        )
        return cls(optuna.trial.Trial(study, trial_id), monitor)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(trainer.callback_metrics[self.monitor]), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True
