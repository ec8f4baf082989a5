"""The files a training run leaves besides checkpoints: confusion matrices and figures,
written to `<output_dir>/artifacts/` and uploaded to the MLflow run."""

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from fer_lab.tracking.confusion import write_confusion_matrix
from fer_lab.tracking.figures import write_class_histogram, write_learning_curves
from fer_lab.tracking.mlflow_logger import FERMLflowLogger
from fer_lab.training.misclassified import write_most_confused
from fer_lab.training.module import SPLITS, FERLitModule

log = logging.getLogger(__name__)


class RunArtifacts(pl.Callback):
    """Writes confusion matrices (best validation epoch, test), class histograms, learning
    curves and the most confused validation images, and uploads them with the best checkpoint
    to MLflow; with other loggers the files stay in `output_dir`.

    Per-epoch losses and accuracies live in this callback's state, which Lightning saves in
    every checkpoint, so a resumed run's curves have all its epochs, whatever the logger.
    """

    def __init__(self, output_dir: str, title: str = "", max_misclassified: int = 16) -> None:
        self.output_dir = Path(output_dir) / "artifacts"
        self.title = title
        self.max_misclassified = max_misclassified
        self.history: dict[int, dict[str, float]] = {}  # epoch -> train/val loss and acc

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict["history"]

    def _record(self, trainer: pl.Trainer, split: str) -> None:
        row = self.history.setdefault(trainer.current_epoch, {})
        for name in (f"{split}/loss", f"{split}/acc"):
            if name in trainer.callback_metrics:
                row[name] = float(trainer.callback_metrics[name])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: FERLitModule) -> None:
        self._record(trainer, "train")  # Lightning saves checkpoints after this: last.ckpt has it

    def on_validation_end(self, trainer: pl.Trainer, pl_module: FERLitModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "val")

    def _upload(self, trainer: pl.Trainer, paths: list[Path], artifact_path: str) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, FERMLflowLogger):
                for path in paths:
                    logger.upload_artifact(path, artifact_path)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: FERLitModule) -> None:
        if trainer.is_global_zero:
            counts = {split: trainer.datamodule.class_counts(split) for split in SPLITS}
            stem = self.output_dir / "class_histogram"
            paths = write_class_histogram(counts, pl_module.class_names, stem, self.title)
            self._upload(trainer, paths, "figures")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: FERLitModule) -> None:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            self._upload(trainer, [Path(best)], "checkpoints")
        if not trainer.is_global_zero:
            return
        paths = write_learning_curves(self.history, self.output_dir / "learning_curves", self.title)
        self._upload(trainer, paths, "figures")
        if pl_module.best_val_confusion is None:
            return
        confusion = pl_module.best_val_confusion.numpy()
        title = f"{self.title}: validation, best epoch"
        stem = self.output_dir / "confusion_matrix_val_best"
        paths = write_confusion_matrix(confusion, pl_module.class_names, stem, title)
        self._upload(trainer, paths, "confusion_matrices")
        if best:  # on the root device: after fit, Lightning has moved the module to the CPU
            paths = write_most_confused(
                pl_module.net,
                best,
                trainer.datamodule.val_dataloader(),
                confusion,
                pl_module.class_names,
                self.output_dir / "misclassified_val_best",
                title,
                self.max_misclassified,
                trainer.strategy.root_device,
            )
            self._upload(trainer, paths, "figures")

    def on_test_end(self, trainer: pl.Trainer, pl_module: FERLitModule) -> None:
        if trainer.is_global_zero and pl_module.test_confusion is not None:
            paths = write_confusion_matrix(
                pl_module.test_confusion.numpy(),
                pl_module.class_names,
                self.output_dir / "confusion_matrix_test",
                f"{self.title}: test",
            )
            self._upload(trainer, paths, "confusion_matrices")
