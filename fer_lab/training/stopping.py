"""Stopping a run safely: Ctrl-C/SIGTERM at a batch boundary, non-finite losses caught
without a per-step host sync."""

import logging
import signal
from types import FrameType
from typing import Any

import pytorch_lightning as pl

from fer_lab.core.errors import FERLabError, StopRequested

log = logging.getLogger(__name__)


class NonFiniteLossError(FERLabError):
    """The training loss became NaN or infinite; the run stops before any checkpoint is written."""


class GracefulStop(pl.Callback):
    """The first Ctrl-C or SIGTERM stops training after the current batch; a second Ctrl-C
    stops at once.

    The run then holds `last.ckpt` of the last completed epoch (written every epoch), so a
    resume repeats only the interrupted epoch and the metric history has no partial epoch.
    Under DDP the ranks stop together: at each training batch end they agree (one tiny
    all-reduce) whether any of them was asked, since a rank that stopped alone would leave
    the others waiting in the next gradient all-reduce. (Lightning's own SIGTERM handling
    decides per rank; these handlers replace it while training, and Lightning restores its
    own at teardown.)
    """

    def __init__(self) -> None:
        self.requested: int | None = None  # the first signal received
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = self.requested or signum
        log.warning(
            "%s: stopping after this batch (Ctrl-C again stops at once)",
            signal.Signals(signum).name,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, error: BaseException
    ) -> None:
        self._restore()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        asked = self.requested is not None
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if asked:
            raise StopRequested(self.requested or signal.SIGTERM)

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # Ranks may hold one validation batch more than others: no collective here.
        if self.requested is not None and trainer.world_size == 1:
            raise StopRequested(self.requested)


def raise_if_nonfinite(seen: float, loss: float, epoch: int, step: float, batch: float) -> None:
    """Stop the run if the training tally recorded a non-finite loss (fer_lab.training.metrics):
    read before validation, at the end of each epoch (before the checkpoints and the epoch's
    metrics) and at the logging interval, so broken weights are never scored or saved."""
    if seen:
        raise NonFiniteLossError(
            f"train/loss is {loss} at epoch {epoch}, step {int(step)} (batch {int(batch)} of "
            "the epoch); the run stopped before validating or saving the weights that followed, "
            "the last good checkpoint is kept. Lower optimizer.lr, set "
            "trainer.gradient_clip_val, or check the data for extreme values"
        )
