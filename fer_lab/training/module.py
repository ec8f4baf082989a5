"""The LightningModule: loss, metrics and optimiser wiring around any `FERNet`.

A training step queues its work on the device and returns: the loss, the epoch's sums and the
non-finite-loss guard accumulate in one device tensor (fer_lab.training.metrics), read by the
host only at the logging interval and at the epoch's end (see README, "GPU").
"""

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import nn
from torchmetrics import MaxMetric

from fer_lab.models import FERNet
from fer_lab.training.cuda_graph import GraphedStep, tensor_learning_rates
from fer_lab.training.metrics import (
    BAD_BATCH,
    BAD_LOSS,
    BAD_STEP,
    SEEN,
    EvaluationTally,
    TrainingTally,
    confusion_scores,
    per_class_scores,
)
from fer_lab.training.mixing import BatchMix, mixed_loss
from fer_lab.training.stopping import raise_if_nonfinite

Batch = tuple[torch.Tensor, torch.Tensor]
SPLITS = ("train", "val", "test")
# Under DDP, Lightning suggests sync_dist=True for every epoch-level value logged as a tensor;
# fer_lab's evaluation tallies are summed over the ranks before they are logged.
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self.log\('(val|test)/",
    category=PossibleUserWarning,
)


class FERLitModule(pl.LightningModule):
    """Trains a network on faces; logs `train/*`, `val/*` (with `val/acc_best`) and `test/*`.

    The confusion matrix of the best validation epoch is kept in `best_val_confusion` and that
    of the test run in `test_confusion`, for the artifact callback to write out.
    """

    def __init__(
        self,
        net: FERNet,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: dict[str, Any] | None,
        class_names: list[str],
        config: dict[str, Any] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        steps_per_call: int = 1,
        cuda_graphs: bool = False,
        mixing: BatchMix | None = None,
    ) -> None:
        """`steps_per_call` > 1: each training batch holds that many optimizer steps' batches
        (the loader's batch is that many times `data.batch_size`), stepped here under manual
        optimization, so Lightning's per-step loop and hooks run once per call. `cuda_graphs`:
        each step replays one captured CUDA graph (fer_lab/training/cuda_graph.py)."""
        super().__init__()
        self.steps_per_call = steps_per_call
        self.cuda_graphs = cuda_graphs
        self.mixing = mixing
        self.automatic_optimization = steps_per_call == 1 and not cuda_graphs
        self.graphed_step: GraphedStep | None = None
        # Under manual optimization, run after each optimizer step (Lightning's batch hooks
        # run once per call): what must see every step's weights (callbacks=ema).
        self.after_optimizer_step: list[Callable[[], None]] = []
        self._read_at_step = 0
        self.channels_last = channels_last
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        if compile:
            net.compile()  # in place: state_dict keys, hence checkpoints, stay as they are
        self.net = net
        self.regularized = type(net).regularization_loss is not FERNet.regularization_loss
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler = scheduler
        self.class_names = list(class_names)
        self.config = config
        self.tally: TrainingTally | None = None  # made on the training device at fit start
        self.evaluation: dict[str, EvaluationTally] = {}
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best epoch
        self.best_val_confusion: torch.Tensor | None = None
        self.best_epoch: int | None = None  # counted from 1, as the summary prints it
        self.test_confusion: torch.Tensor | None = None
        # The metrics of the epoch a restored checkpoint ended: a run resumed after its last
        # epoch has nothing left to fit, and still reports its optimised metric.
        self.restored_metrics: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _objective(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss to optimise; the data loss and the L2 term go to the tally. Under mixup or
        cutmix the data loss weighs both labels, and train/acc counts each image's own."""
        if self.mixing is None:
            logits = self(images)
            loss = self.loss_fn(logits, labels)  # the data loss, comparable across recipes
        else:
            images, labels, partners, lam = self.mixing(images, labels)
            logits = self(images)
            loss = mixed_loss(self.loss_fn, logits, labels, partners, lam)
        regularization = self.net.regularization_loss() if self.regularized else None
        self.tally.add(loss, logits, labels, regularization)
        return loss if regularization is None else loss + regularization

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return self._objective(*batch)
        optimizer = self.optimizers()
        raw = optimizer.optimizer
        # fp16's gradient scaler lives in Lightning's step; otherwise the bare optimizer steps
        # and the step is counted here, without Lightning's per-step Python around it.
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        images, labels = batch
        steps = min(self.steps_per_call, len(labels))
        for x, y in zip(images.tensor_split(steps), labels.tensor_split(steps), strict=True):
            if scaled:
                optimizer.zero_grad(set_to_none=True)
                self.manual_backward(self._objective(x, y))
                optimizer.step()
            else:
                with self._counted_step():
                    if self.cuda_graphs:
                        self._graphed_step(x, y, raw)
                    else:
                        raw.zero_grad(set_to_none=True)
                        self.optimizer_step_graphable(x, y, raw)
            self._step_schedulers("step")
            for hook in self.after_optimizer_step:
                hook()
        return None

    @contextlib.contextmanager
    def _counted_step(self) -> Iterator[None]:
        """One optimizer step for Lightning's global step, as LightningOptimizer counts it."""
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        yield
        progress.increment_completed()

    def optimizer_step_graphable(
        self, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        """One optimizer step with no Python value that changes from step to step: what a
        CUDA graph captures (the optimizer reads its learning rate from a device tensor)."""
        self._objective(images, labels).backward()
        optimizer.step()

    def _graphed_step(
        self, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        """A replay of the captured step; a batch of another shape (a smaller last batch)
        steps eagerly."""
        if self.graphed_step is None:
            self.graphed_step = GraphedStep(
                lambda x, y: self.optimizer_step_graphable(x, y, optimizer),
                self,
                optimizer,
                self.tally.state,
                images,
                labels,
            )
        if self.graphed_step.fits(images):
            self.graphed_step(images, labels)
        else:
            optimizer.zero_grad(set_to_none=False)  # the graph's gradient tensors stay
            self.optimizer_step_graphable(images, labels, optimizer)

    def _step_schedulers(self, interval: str, monitored: dict[str, Any] | None = None) -> None:
        """Under manual optimization Lightning steps no scheduler: steps here, epochs at the
        last batch (before validation, as Lightning does), plateaus after validation."""
        if self.automatic_optimization or self.scheduler_interval != interval:
            return
        scheduler = self.lr_schedulers()
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if not plateau and monitored is None:
            scheduler.step()
        elif plateau and monitored is not None:
            monitor = self.scheduler.get("monitor", "val/loss")
            if monitor in monitored:
                scheduler.step(float(monitored[monitor]))

    @functools.cached_property
    def scheduler_interval(self) -> str | None:
        """'step' or 'epoch' (None without a scheduler), read once: the config is slow to read."""
        if not self.scheduler or self.scheduler.get("scheduler") is None:
            return None
        return self.scheduler.get("interval", "epoch")

    def on_train_start(self) -> None:
        self.tally = TrainingTally(next(self.net.parameters()), first_step=self.global_step)
        self._read_at_step = self.global_step

    def on_train_epoch_start(self) -> None:
        self.tally.start_epoch()

    def _read_tally(self) -> list[float]:
        """The tally's values (one host sync); under DDP the sums of every rank and the first
        non-finite record of any, so that all ranks stop together."""
        state = self.tally.state
        if self.trainer.world_size == 1:
            return state.tolist()
        ranks = self.trainer.strategy.all_gather(state)  # [ranks, 10]
        values = ranks.sum(0)
        values[SEEN:] = ranks[int(ranks[:, SEEN].argmax())][SEEN:]
        return values.tolist()

    def _check_finite(self, values: list[float]) -> None:
        raise_if_nonfinite(
            values[SEEN], values[BAD_LOSS], self.current_epoch, values[BAD_STEP], values[BAD_BATCH]
        )

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        """At the logging interval the tally is read (one sync): the NaN guard, and the running
        train/*_step values for the logger. At the epoch's last batch, the epoch's train/*
        values are logged, before any callback's epoch end (the artifacts, checkpoints)."""
        last = batch_idx + 1 == self.trainer.num_training_batches
        if last:
            self._step_schedulers("epoch")
        every = self.trainer.log_every_n_steps
        due = bool(every) and self.global_step - self._read_at_step >= every
        if not (due or last):
            return
        self._read_at_step = self.global_step
        values = self._read_tally()
        self._check_finite(values)
        means = self.tally.means(values)
        if not self.regularized:
            means.pop("train/reg_loss")
        if due and self.logger is not None:
            step_metrics = {f"{k}_step": v for k, v in means.items() if k != "train/reg_loss"}
            self.logger.log_metrics(step_metrics, step=self.global_step)
        if last:
            for name, value in means.items():
                self.log(
                    name, value, on_step=False, on_epoch=True, prog_bar=name != "train/reg_loss"
                )

    def on_validation_start(self) -> None:
        # Validation must not score (and save) broken weights.
        if self.tally is not None:
            self._check_finite(self._read_tally())

    def on_train_epoch_end(self) -> None:
        # Lightning calls this before the checkpoint callbacks and the epoch's logging.
        self._check_finite(self._read_tally())

    def _evaluation_step(self, batch: Batch, split: str) -> None:
        images, labels = batch
        logits = self(images)
        if split not in self.evaluation:
            self.evaluation[split] = EvaluationTally(len(self.class_names), logits)
        self.evaluation[split].add(self.loss_fn(logits, labels), logits, labels)

    def _evaluation_results(self, split: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The epoch's loss, acc and f1_macro, and its confusion matrix; summed over ranks."""
        tally = self.evaluation[split]
        sums, confusion = tally.sums, tally.confusion
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums.clone(), reduce_op="sum")
            confusion = self.trainer.strategy.reduce(confusion.clone(), reduce_op="sum")
        n = len(self.class_names)
        confusion = confusion.view(n, n)
        scores = {"loss": sums[0] / sums[1].clamp(min=1), **confusion_scores(confusion)}
        confusion = confusion.clone()  # the tally's own tensor is reset next
        tally.reset()
        return scores, confusion

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if "val" not in self.evaluation:  # no validation batches
            return
        scores, confusion = self._evaluation_results("val")
        self.log_dict({f"val/{k}": v for k, v in scores.items()}, prog_bar=True)
        if self.trainer.sanity_checking:  # its few batches must not count as an epoch
            return
        # The state, not compute(): after a resume it holds the best so far, before any update.
        previous_best = self.val_acc_best.max_value.clone()
        self.val_acc_best.update(scores["acc"])
        if scores["acc"] > previous_best:
            self.best_val_confusion = confusion.cpu().long()
            self.best_epoch = self.current_epoch + 1
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)
        self._step_schedulers("epoch", monitored={f"val/{k}": v for k, v in scores.items()})

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        scores, confusion = self._evaluation_results("test")
        self.log_dict({f"test/{k}": v for k, v in scores.items()})
        for metric, values in per_class_scores(confusion).items():
            if metric == "tp":
                continue
            for name, value in zip(self.class_names, values, strict=True):
                self.log(f"test/{metric}/{name}", value)
        self.test_confusion = confusion.cpu().long()

    def configure_optimizers(self) -> dict[str, Any]:
        trainable = [p for p in self.parameters() if p.requires_grad]
        # A CUDA graph replays a fused optimizer step (one kernel) that reads its learning rate
        # from a tensor; the learning rate becomes one once the scheduler set its first value.
        optimizer = self.optimizer_factory(
            params=trainable, **({"fused": True} if self.cuda_graphs else {})
        )
        if not self.scheduler or self.scheduler.get("scheduler") is None:
            if self.cuda_graphs:
                tensor_learning_rates(optimizer)
            return {"optimizer": optimizer}
        interval = self.scheduler_interval
        # Step-wise schedules (one-cycle) need the run's length, known only to the trainer.
        extra = (
            {"total_steps": int(self.trainer.estimated_stepping_batches) * self.steps_per_call}
            if interval == "step"
            else {}
        )
        scheduler = self.scheduler["scheduler"](optimizer=optimizer, **extra)
        if self.cuda_graphs:
            tensor_learning_rates(optimizer)
        if not self.automatic_optimization:  # stepped by _step_schedulers
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": interval,
                "monitor": self.scheduler.get("monitor", "val/loss"),
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The resolved config travels with the weights, so a checkpoint can be rebuilt alone.
        checkpoint["fer_lab_config"] = self.config
        checkpoint["fer_lab_classes"] = self.class_names
        checkpoint["fer_lab_best_val_confusion"] = self.best_val_confusion
        checkpoint["fer_lab_best_epoch"] = self.best_epoch
        checkpoint["fer_lab_metrics"] = scalar_metrics(self.trainer.callback_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_confusion = checkpoint.get("fer_lab_best_val_confusion")
        self.best_epoch = checkpoint.get("fer_lab_best_epoch")
        self.restored_metrics = checkpoint.get("fer_lab_metrics", {})


def scalar_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """The single-number entries of Lightning's `callback_metrics`, as floats."""
    return {name: float(value) for name, value in metrics.items() if value.numel() == 1}
