"""Stopping a run safely: Ctrl-C/SIGTERM at a batch boundary, non-finite losses caught
without a per-step host sync."""

import logging
import signal
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch

from fer_lab.core.errors import FERLabError

log = logging.getLogger(__name__)


class NonFiniteLossError(FERLabError):
    """The training loss became NaN or infinite; the run stops before any checkpoint is written."""


class StopRequested(SystemExit):
    """Raised at a batch boundary after Ctrl-C or SIGTERM; the exit code is 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


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


class NonFiniteLossWatch:
    """Notes the first non-finite training loss on the loss's own device, so that watching
    costs a training step no host sync; `raise_if_seen` reads the note (one sync) where a bad
    state could leave the process: before validation, at the end of the epoch (before the
    checkpoints and the epoch's metrics) and every so many steps.
    """

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None  # [seen, loss, epoch, step, batch]

    def observe(self, loss: torch.Tensor, epoch: int, step: int, batch_idx: int) -> None:
        loss = loss.detach().double()
        if self._first_bad is None:
            self._first_bad = loss.new_zeros(5)
        # new_full fills on the device: no host-to-device copy, which would sync.
        now = torch.stack(
            [loss.new_ones(()), loss, *(loss.new_full((), n) for n in (epoch, step, batch_idx))]
        )
        first = ~torch.isfinite(loss) & (self._first_bad[0] == 0)
        self._first_bad = torch.where(first, now, self._first_bad)

    def raise_if_seen(self) -> None:
        if self._first_bad is None:
            return
        seen, loss, epoch, step, batch_idx = self._first_bad.tolist()
        if seen:
            raise NonFiniteLossError(
                f"train/loss is {loss} at epoch {int(epoch)}, step {int(step)} (batch "
                f"{int(batch_idx)} of the epoch); the run stopped before validating or saving "
                "the weights that followed, the last good checkpoint is kept. Lower "
                "optimizer.lr, set trainer.gradient_clip_val, or check the data for extreme values"
            )
