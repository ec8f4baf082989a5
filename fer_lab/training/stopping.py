"""Stopping a run safely: Ctrl-C/SIGTERM at a batch boundary, non-finite losses caught
without a per-step host sync."""

import logging
import signal
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import Strategy

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

    def raise_if_seen(self, strategy: Strategy | None = None) -> None:
        """Raise if a non-finite loss was seen; under DDP on every rank if one rank saw it,
        so that none waits for the others in the next all-reduce."""
        record = self._first_bad
        if strategy is not None and getattr(strategy, "world_size", 1) > 1:
            mine = record if record is not None else torch.zeros(5, device=strategy.root_device)
            records = strategy.all_gather(mine.float())  # [ranks, 5]; gloo has no float64
            record = records[int(records[:, 0].argmax())]
        if record is None:
            return
        seen, loss, epoch, step, batch_idx = record.tolist()
        if seen:
            raise NonFiniteLossError(
                f"train/loss is {loss} at epoch {int(epoch)}, step {int(step)} (batch "
                f"{int(batch_idx)} of the epoch); the run stopped before validating or saving "
                "the weights that followed, the last good checkpoint is kept. Lower "
                "optimizer.lr, set trainer.gradient_clip_val, or check the data for extreme values"
            )
