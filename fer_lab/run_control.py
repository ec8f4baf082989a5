"""Stopping safely: atomic checkpoints, Ctrl-C/SIGTERM at a batch boundary, non-finite losses."""

import logging
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from fer_lab.errors import FERLabError

log = logging.getLogger(__name__)


class NonFiniteLossError(FERLabError):
    """The training loss became NaN or infinite; the run stops before any checkpoint is written."""


class StopRequested(SystemExit):
    """Raised at a batch boundary after Ctrl-C or SIGTERM; the exit code is 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it.

    A process killed mid-write leaves the previous checkpoint intact. (Lightning's own writer
    stages in the system temp dir, which is a copy, not a rename, across filesystems.)
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with partial.open("wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)


class GracefulStop(pl.Callback):
    """The first Ctrl-C or SIGTERM stops training after the current batch; a second Ctrl-C
    stops at once.

    The run then holds `last.ckpt` of the last completed epoch (written every epoch), so a
    resume repeats only the interrupted epoch and the metric history has no partial epoch.
    Lightning's own handler notices SIGTERM; this one adds Ctrl-C. It is installed once
    training starts, after Lightning has saved the handlers it restores at teardown.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: Any = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        log.warning("Ctrl-C: stopping after this batch (press again to stop at once)")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, error: BaseException
    ) -> None:
        self._restore()

    def _stop_if_asked(self, trainer: pl.Trainer) -> None:
        if self.interrupted:
            raise StopRequested(signal.SIGINT)
        if trainer.received_sigterm:
            raise StopRequested(signal.SIGTERM)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._stop_if_asked(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._stop_if_asked(trainer)


def check_finite(loss: torch.Tensor, epoch: int, step: int, batch_idx: int) -> None:
    """Raise before the optimiser step uses a NaN or infinite loss."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"train/loss is {loss.item()} at epoch {epoch}, step {step} (batch {batch_idx} of "
            "the epoch); the last good checkpoint is kept. Lower optimizer.lr, set "
            "trainer.gradient_clip_val, or check the data for extreme values"
        )
