"""An exponential moving average (EMA) of the weights: what validation scores, what the test
scores and what the saved checkpoints hold (`callbacks=ema`).

The average is updated after every optimizer step by one fused lerp on the device, with the
decay computed on the host from the step count, so training keeps its no-host-sync step.
Lightning's own `EMAWeightAveraging` is not used: its `AveragedModel` reads a device counter
twice per update (two host syncs a step on a GPU), and its checkpoint hook also runs for
`trainer.test(ckpt_path=...)`, where it puts the training weights back in place of the average.

A checkpoint's `state_dict` holds the average, so `eval`, `predict`, `visualize` and the test
use it as they load any checkpoint; the training weights travel beside it under `CHECKPOINT_KEY`
for a resumed fit, which continues both.
"""

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torchmetrics import Metric

CHECKPOINT_KEY = "fer_lab_ema"


def averaged_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The floating-point parameters and buffers (batch-norm statistics) of `module`, by their
    state_dict names; metric states (a best-so-far accuracy) are not weights and stay out."""
    metrics = [name + "." for name, child in module.named_modules() if isinstance(child, Metric)]
    named = [*module.named_parameters(), *module.named_buffers()]
    return [
        (name, tensor.detach())
        for name, tensor in named
        if tensor.is_floating_point() and not name.startswith(tuple(metrics))
    ]


class EMAWeights(pl.Callback):
    """Keeps `average = decay * average + (1 - decay) * weights` after each optimizer step.

    `warmup` uses `min(decay, (1 + n) / (10 + n))` for the n-th update, so that the random
    initial weights fade within the first few hundred steps instead of weighing on the average
    for thousands (0.999 ** 450, one FER2013 epoch at batch 64, is still 0.64).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self._names: list[str] = []
        self._weights: list[torch.Tensor] = []  # the module's own tensors, updated in place
        self._average: list[torch.Tensor] = []
        self._training_copy: list[torch.Tensor] = []  # the weights while the average is in place
        self._swapped = False
        self._last_step = -1
        self._restored: dict[str, torch.Tensor] | None = None

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not in setup(): the module is on its device now. A resumed fit's module holds
        # the checkpoint's state_dict, which is the average.
        named = averaged_tensors(pl_module)
        self._names = [name for name, _ in named]
        self._weights = [tensor for _, tensor in named]
        self._average = [tensor.clone() for tensor in self._weights]
        self._training_copy = [torch.empty_like(tensor) for tensor in self._weights]
        self._last_step = trainer.global_step
        if self._restored is not None:
            self._put_back_training_weights()
        if not pl_module.automatic_optimization:  # several steps a call: after each one
            pl_module.after_optimizer_step.append(self.update)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if not pl_module.automatic_optimization:
            return
        if trainer.global_step == self._last_step:  # accumulating gradients: no step yet
            return
        self._last_step = trainer.global_step
        self.update()

    def update(self) -> None:
        """One step of the average, queued on the weights' device."""
        torch._foreach_lerp_(self._average, self._weights, 1.0 - self.current_decay())
        self.updates += 1

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._average:
            torch._foreach_copy_(self._training_copy, self._weights)
            torch._foreach_copy_(self._weights, self._average)
            self._swapped = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            torch._foreach_copy_(self._weights, self._training_copy)
            self._swapped = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The fitted module is the average from here on (a test without a checkpoint)."""
        if self.update in getattr(pl_module, "after_optimizer_step", ()):
            pl_module.after_optimizer_step.remove(self.update)
        if self._average:
            torch._foreach_copy_(self._weights, self._average)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self._average:  # outside fit: the module's weights already are the average
            return
        training = self._training_copy if self._swapped else self._weights
        state = checkpoint["state_dict"]
        saved = {}
        for name, average, weights in zip(self._names, self._average, training, strict=True):
            if name in state:  # persistent tensors only
                state[name] = average
                saved[name] = weights
        checkpoint[CHECKPOINT_KEY] = {"training_weights": saved, "updates": self.updates}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Only a resumed fit needs the training weights back; a test or an evaluation scores
        # the average, which the state_dict already holds.
        saved = checkpoint.get(CHECKPOINT_KEY)
        if trainer.state.fn != TrainerFn.FITTING or saved is None:
            return
        self.updates = saved["updates"]
        self._restored = saved["training_weights"]
        if self._average:  # strategies that restore after on_fit_start
            self._put_back_training_weights()

    def _put_back_training_weights(self) -> None:
        """The module holds the restored average: that becomes the average, and the saved
        training weights go back into the module."""
        assert self._restored is not None
        torch._foreach_copy_(self._average, self._weights)
        for name, weights in zip(self._names, self._weights, strict=True):
            if name in self._restored:
                weights.copy_(self._restored[name])
        self._restored = None
