"""A progress bar that redraws a few times a second, whatever the step rate.

Lightning's TQDM bar redraws every `refresh_rate` steps and reads the logged metrics each time:
at thousands of small steps a second that is host work on every step. Redrawing by the clock
keeps the bar live at any rate for a fixed cost per second.
"""

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class TimedProgressBar(TQDMProgressBar):
    """TQDM bars redrawn at most every `refresh_every_s` seconds, and at the end of each bar."""

    def __init__(self, refresh_every_s: float = 0.25, **kwargs: Any) -> None:
        super().__init__(refresh_rate=1, **kwargs)
        self.refresh_every_s = refresh_every_s
        self._last_redraw = 0.0

    def _due(self, bar: Any, batch_idx: int) -> bool:
        now = time.monotonic()
        if batch_idx + 1 == getattr(bar, "total", None) or now - self._last_redraw >= (
            self.refresh_every_s
        ):
            self._last_redraw = now
            return True
        return False

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self._due(self.train_progress_bar, idx):
            super().on_train_batch_end(trainer, module, outputs, batch, idx)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._due(self.val_progress_bar, idx):
            super().on_validation_batch_end(trainer, module, outputs, batch, idx, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._due(self.test_progress_bar, idx):
            super().on_test_batch_end(trainer, module, outputs, batch, idx, dataloader_idx)
