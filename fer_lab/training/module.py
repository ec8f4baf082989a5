"""The LightningModule: loss, metrics and optimiser wiring around any `FERNet`.

A training step queues its work on the device and returns: nothing in it, the metrics or the
non-finite-loss guard waits for the GPU (see README, "GPU").
"""

import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from fer_lab.models import FERNet
from fer_lab.training.metrics import BatchMean
from fer_lab.training.stopping import NonFiniteLossWatch

Batch = tuple[torch.Tensor, torch.Tensor]
SPLITS = ("train", "val", "test")
# Steps between two reads of the non-finite-loss record, each a host sync: a NaN run stops
# within this many steps, and before any validation, checkpoint or logged epoch.
NONFINITE_CHECK_EVERY = 50
# Under DDP, Lightning suggests sync_dist=True for every epoch-level value logged as a tensor;
# fer_lab's come from torchmetrics' compute(), which has already summed the ranks' states.
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
    ) -> None:
        super().__init__()
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
        # Labels and logits come from fer_lab's own loaders and network: checking them on every
        # step (torch.unique and friends) would make the host wait for the GPU each time.
        n, unchecked = len(class_names), {"validate_args": False}

        def summary() -> MetricCollection:
            return MetricCollection(
                {
                    "acc": MulticlassAccuracy(n, average="micro", **unchecked),
                    "f1_macro": MulticlassF1Score(n, average="macro", **unchecked),
                }
            )

        self.train_metrics = MetricCollection(
            {"acc": MulticlassAccuracy(n, average="micro", **unchecked)}
        )
        self.val_metrics = summary()
        self.test_metrics = summary()
        self.test_per_class = MetricCollection(
            {
                "precision": MulticlassPrecision(n, average=None, **unchecked),
                "recall": MulticlassRecall(n, average=None, **unchecked),
                "f1": MulticlassF1Score(n, average=None, **unchecked),
            }
        )
        self.mean_loss = nn.ModuleDict({f"{split}_loss": BatchMean() for split in SPLITS})
        self.val_confusion = MulticlassConfusionMatrix(n, **unchecked)
        self.test_confusion_metric = MulticlassConfusionMatrix(n, **unchecked)
        self.nonfinite = NonFiniteLossWatch()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best epoch
        self.best_val_confusion: torch.Tensor | None = None
        self.test_confusion: torch.Tensor | None = None
        # The metrics of the epoch a restored checkpoint ended: a run resumed after its last
        # epoch has nothing left to fit, and still reports its optimised metric.
        self.restored_metrics: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, batch: Batch, split: str) -> tuple[torch.Tensor, ...]:
        """The data loss, logged as `<split>/loss` (comparable with a plain cross-entropy
        whatever the recipe adds to the training objective), the logits and the labels."""
        images, labels = batch
        logits = self(images)
        loss = self.loss_fn(logits, labels)
        self.mean_loss[f"{split}_loss"].update(loss, len(labels))
        self.log(
            f"{split}/loss",
            self.mean_loss[f"{split}_loss"],
            on_step=False,
            on_epoch=True,
            prog_bar=True,
        )
        return loss, logits.detach(), labels

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, logits, labels = self._step(batch, "train")
        if self.regularized:  # seed 001's L2 term: optimised, and logged on its own
            regularization = self.net.regularization_loss()
            self.log("train/reg_loss", regularization, on_step=False, on_epoch=True)
            loss = loss + regularization
        self.nonfinite.observe(loss, self.current_epoch, self.global_step, batch_idx)
        self.train_metrics.update(logits, labels)
        self.log(
            "train/acc", self.train_metrics["acc"], on_step=False, on_epoch=True, prog_bar=True
        )
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if (batch_idx + 1) % NONFINITE_CHECK_EVERY == 0:
            self.nonfinite.raise_if_seen(self.trainer.strategy)

    def on_validation_start(self) -> None:
        # Validation must not score (and save) broken weights.
        self.nonfinite.raise_if_seen(self.trainer.strategy)

    def on_train_epoch_end(self) -> None:
        # Lightning calls this before the checkpoint callbacks and the epoch's logging.
        self.nonfinite.raise_if_seen(self.trainer.strategy)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        _, logits, labels = self._step(batch, "val")
        self.val_metrics.update(logits, labels)
        self.val_confusion.update(logits, labels)

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute()
        self.val_metrics.reset()
        confusion = self.val_confusion.compute()
        self.val_confusion.reset()
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True)
        if self.trainer.sanity_checking:  # its few batches must not count as an epoch
            return
        # The state, not compute(): after a resume it holds the best so far, before any update.
        previous_best = self.val_acc_best.max_value.clone()
        self.val_acc_best.update(metrics["acc"])
        if metrics["acc"] > previous_best:
            self.best_val_confusion = confusion.cpu()
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        _, logits, labels = self._step(batch, "test")
        self.test_metrics.update(logits, labels)
        self.test_per_class.update(logits, labels)
        self.test_confusion_metric.update(logits, labels)

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.compute().items()})
        for metric, values in self.test_per_class.compute().items():
            for name, value in zip(self.class_names, values, strict=True):
                self.log(f"test/{metric}/{name}", value)
        self.test_confusion = self.test_confusion_metric.compute().cpu()
        for metrics in (self.test_metrics, self.test_per_class, self.test_confusion_metric):
            metrics.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=trainable)
        if not self.scheduler or self.scheduler.get("scheduler") is None:
            return {"optimizer": optimizer}
        interval = self.scheduler.get("interval", "epoch")
        # Step-wise schedules (one-cycle) need the run's length, known only to the trainer.
        extra = (
            {"total_steps": int(self.trainer.estimated_stepping_batches)}
            if interval == "step"
            else {}
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.scheduler["scheduler"](optimizer=optimizer, **extra),
                "interval": interval,
                "monitor": self.scheduler.get("monitor", "val/loss"),
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The resolved config travels with the weights, so a checkpoint can be rebuilt alone.
        checkpoint["fer_lab_config"] = self.config
        checkpoint["fer_lab_classes"] = self.class_names
        checkpoint["fer_lab_best_val_confusion"] = self.best_val_confusion
        checkpoint["fer_lab_metrics"] = scalar_metrics(self.trainer.callback_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_confusion = checkpoint.get("fer_lab_best_val_confusion")
        self.restored_metrics = checkpoint.get("fer_lab_metrics", {})


def scalar_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """The single-number entries of Lightning's `callback_metrics`, as floats."""
    return {name: float(value) for name, value in metrics.items() if value.numel() == 1}
