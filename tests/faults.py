"""Fault injection for the robustness tests: callbacks a test adds with `+callbacks.fault=...`.

Each fires once per `marker` file, so a resumed run with the same command runs cleanly.
"""

import os
import signal
import time
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
    """Sends `signal` (KILL, TERM, INT) to this process at the start of one training batch;
    with `group`, to its whole process group (every rank of a DDP run the test started in a
    session of its own), from rank zero."""

    def __init__(self, epoch: int, batch: int, marker: str, name: str, group: bool = False) -> None:
        super().__init__(epoch, batch, marker)
        self.signum = signal.Signals[f"SIG{name}"]
        self.group = group

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.group and not trainer.is_global_zero:
            return
        if self._due(trainer, batch_idx):
            if self.group:
                os.killpg(os.getpgid(0), self.signum)
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


class KillAt(pl.Callback):
    """SIGKILLs this process once (per `marker`) at a point after training's batches: `point` is
    `epoch_start` (of `epoch`, so between two epochs), `test_batch` (during the test),
    `artifact_upload` (the first confusion matrix upload after fit: mid-artifacts) or
    `test_end` (test metrics logged, test artifacts written)."""

    def __init__(self, point: str, marker: str, epoch: int = 0) -> None:
        self.point, self.marker, self.epoch = point, Path(marker), epoch

    def _kill(self, point: str) -> None:
        if point == self.point and not self.marker.exists():
            self.marker.write_text("fired")
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            self._kill("epoch_start")

    def on_test_batch_start(self, *args: Any) -> None:
        self._kill("test_batch")

    def on_test_end(self, *args: Any) -> None:
        self._kill("test_end")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        logger = trainer.logger
        upload = logger.upload_artifact

        def upload_then_maybe_die(path: Any, artifact_path: str | None = None) -> None:
            if artifact_path == "confusion_matrices":
                self._kill("artifact_upload")
            upload(path, artifact_path)

        logger.upload_artifact = upload_then_maybe_die


class Stall(pl.Callback):
    """Holds training at the start of `epoch` (once per `marker`, which it writes on arrival)
    for up to two minutes, so that a test can act on a run that is alive and resumable."""

    def __init__(self, epoch: int, marker: str) -> None:
        self.epoch, self.marker = epoch, Path(marker)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch and not self.marker.exists():
            self.marker.write_text("stalled")
            time.sleep(120)


class HangFromTrial(pl.Callback):
    """Holds each sweep trial numbered `from_trial` or above at the start of `epoch` (its first
    epochs logged) until `release` exists, at most five minutes, after writing
    `<folder>/hung_<trial>`: a test kills a sweep whose workers are all mid-trial, then runs the
    same command again with `release` written, and its trials train through."""

    def __init__(self, trial: int, from_trial: int, epoch: int, folder: str, release: str) -> None:
        self.trial, self.from_trial, self.epoch = trial, from_trial, epoch
        self.folder, self.release = Path(folder), Path(release)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.trial < self.from_trial or trainer.current_epoch != self.epoch:
            return
        if self.release.exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"hung_{self.trial}").write_text(str(os.getpid()))
        deadline = time.monotonic() + 300
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
