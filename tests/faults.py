"""Fault injection for the robustness tests: callbacks a test adds with `+callbacks.fault=...`.

Each fires once per `marker` file, so a resumed run with the same command runs cleanly.
"""

import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class _Once(pl.Callback):
    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch = epoch
        self.batch = batch
        self.marker = Path(marker)

    def _due(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        if self.marker.exists() or (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return False
        self.marker.write_text("fired")
        return True


class SendSignal(_Once):
    """Sends `signal` (KILL, TERM, INT) to this process at the start of one training batch."""

    def __init__(self, epoch: int, batch: int, marker: str, name: str) -> None:
        super().__init__(epoch, batch, marker)
        self.signum = signal.Signals[f"SIG{name}"]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._due(trainer, batch_idx):
            os.kill(os.getpid(), self.signum)


class PoisonWeights(_Once):
    """Fills the first parameter with NaN at the start of one training batch."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._due(trainer, batch_idx):
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class RecordRunStatus(pl.Callback):
    """Writes the MLflow run's status, as its store has it, to `path` at the start of one
    training batch (to see what the UI shows while a run trains)."""

    def __init__(self, epoch: int, batch: int, path: str) -> None:
        self.epoch, self.batch, self.path = epoch, batch, Path(path)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            from mlflow import MlflowClient

            logger = trainer.logger
            run = MlflowClient(logger._tracking_uri).get_run(logger.run_id)
            self.path.write_text(run.info.status)
