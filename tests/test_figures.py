"""Run figures: learning curves, class histograms, the most confused validation images, and the
curve history surviving a resume from `last.ckpt`."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fer_lab.tracking.figures import (
    most_confused_pair,
    write_class_histogram,
    write_learning_curves,
    write_misclassified_grid,
)
from fer_lab.training.misclassified import (
    find_misclassified,
    net_from_checkpoint,
    write_most_confused,
)
from fer_lab.training.module import FERLitModule
from fer_lab.training.run_artifacts import RunArtifacts

from .helpers import compose_config

CLASSES = ["happy", "sad", "neutral"]


class MeanBrightness(nn.Module):
    """Logits from an image's mean pixel: dark -> class 0, mid -> 1, bright -> 2."""

    def __init__(self) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.tensor([0.0, 0.5, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -20 * (x.mean(dim=(1, 2, 3))[:, None] - self.centres) ** 2


def assert_png(path: Path) -> None:
    assert path.suffix == ".png"
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert path.stat().st_size > 5000


def test_learning_curves_csv_has_one_row_per_epoch(tmp_path: Path) -> None:
    history = {
        1: {"train/loss": 0.9, "train/acc": 0.6, "val/loss": 1.0, "val/acc": 0.5},
        0: {"train/loss": 1.5, "train/acc": 0.3, "val/loss": 1.2, "val/acc": 0.4},
        2: {"train/loss": 0.7, "train/acc": 0.7},  # validation skipped this epoch
    }
    csv_path, png_path = write_learning_curves(history, tmp_path / "curves", "convnet0")
    frame = pd.read_csv(csv_path)
    assert list(frame.columns) == ["epoch", "train/loss", "val/loss", "train/acc", "val/acc"]
    assert frame["epoch"].tolist() == [0, 1, 2]
    assert frame["train/loss"].tolist() == [1.5, 0.9, 0.7]
    assert np.isnan(frame["val/acc"][2])
    assert_png(png_path)


def test_class_histogram_csv_holds_the_counts_per_split(tmp_path: Path) -> None:
    counts = {"train": [40, 5, 20], "val": [4, 1, 2], "test": [3, 0, 2]}
    csv_path, png_path = write_class_histogram(counts, CLASSES, tmp_path / "hist", "t")
    frame = pd.read_csv(csv_path, index_col="class")
    assert frame.index.tolist() == CLASSES
    assert {split: frame[split].tolist() for split in frame.columns} == counts
    assert_png(png_path)


def test_most_confused_pair_is_the_largest_off_diagonal_cell() -> None:
    confusion = np.array([[50, 2, 3], [1, 40, 9], [4, 8, 60]])
    assert most_confused_pair(confusion) == (1, 2)
    assert most_confused_pair(np.diag([5, 6, 7])) is None


def loader_of(means: list[float], labels: list[int]) -> DataLoader:
    """Normalised-looking 1x8x8 images: a gradient around each mean, so they have contrast."""
    ramp = torch.linspace(-0.05, 0.05, 64).reshape(1, 8, 8)
    images = torch.stack([m + ramp for m in means])
    return DataLoader(TensorDataset(images, torch.tensor(labels)), batch_size=3)


def test_misclassified_examples_and_grid(tmp_path: Path) -> None:
    # true sad (1) but bright -> predicted neutral (2) at indices 1, 3, 4, 6
    means = [0.5, 0.95, 0.0, 0.9, 0.8, 1.0, 0.85]
    labels = [1, 1, 0, 1, 1, 2, 1]
    examples = find_misclassified(MeanBrightness(), loader_of(means, labels), 1, 2, 3, "cpu")
    assert examples.indices == [1, 3, 4]  # capped at 3, in loader order across batches
    assert examples.images.shape == (3, 8, 8)
    assert examples.images.min() == 0 and examples.images.max() == 1
    assert (examples.p_predicted > examples.p_true).all()
    assert (examples.p_predicted <= 1).all()

    csv_path, png_path = write_misclassified_grid(examples, CLASSES, 4, tmp_path / "grid", "t")
    frame = pd.read_csv(csv_path)
    assert frame["val_index"].tolist() == [1, 3, 4]
    assert set(frame["true"]) == {"sad"} and set(frame["predicted"]) == {"neutral"}
    assert frame["p_predicted"].to_numpy() == pytest.approx(examples.p_predicted)
    assert_png(png_path)


def test_checkpoint_weights_go_into_a_copy(tmp_path: Path) -> None:
    net = MeanBrightness()
    checkpoint = tmp_path / "best.ckpt"
    torch.save({"state_dict": {"net.centres": torch.tensor([1.0, 0.5, 0.0])}}, checkpoint)
    loaded = net_from_checkpoint(net, checkpoint, torch.device("cpu"))
    assert loaded.centres.tolist() == [1.0, 0.5, 0.0]
    assert net.centres.tolist() == [0.0, 0.5, 1.0]
    assert not loaded.training


def test_no_misclassifications_no_grid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fer_lab.training.misclassified"):
        paths = write_most_confused(
            MeanBrightness(),
            "unused.ckpt",
            loader_of([0.0], [0]),
            np.diag([3, 2, 1]),
            CLASSES,
            tmp_path / "grid",
            "t",
        )
    assert paths == []
    assert "No misclassified validation images" in caplog.text
    assert not list(tmp_path.iterdir())


def fit(output: Path, epochs: int, resume: Path | None = None) -> RunArtifacts:
    """A tiny in-process convnet0 run with the run's checkpoint callbacks and RunArtifacts."""
    cfg = compose_config(
        "dataset=synthetic",
        "model=convnet0",
        "dataset.train_per_class=6",
        "dataset.val_per_class=3",
        "dataset.test_per_class=2",
        "data.batch_size=16",
        "data.num_workers=0",
    )
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data)
    module = FERLitModule(
        net=instantiate(cfg.model),
        loss=instantiate(cfg.loss, class_counts=datamodule.class_counts("train")),
        optimizer=instantiate(cfg.optimizer),
        scheduler=None,
        class_names=datamodule.classes,
    )
    artifacts = RunArtifacts(str(output), "convnet0 on synthetic", max_misclassified=4)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[
            artifacts,
            ModelCheckpoint(output / "checkpoints", monitor="val/acc", mode="max"),
            ModelCheckpoint(output / "checkpoints", filename="last", enable_version_counter=False),
        ],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    return artifacts


def test_run_artifacts_curves_cover_the_epochs_before_a_resume(tmp_path: Path) -> None:
    first = fit(tmp_path, epochs=1)
    assert sorted(first.history) == [0]
    resumed = fit(tmp_path, epochs=2, resume=tmp_path / "checkpoints" / "last.ckpt")
    assert resumed.history[0] == first.history[0]
    curves = pd.read_csv(tmp_path / "artifacts" / "learning_curves.csv")
    assert curves["epoch"].tolist() == [0, 1]
    assert not curves.isna().any().any()
    histogram = pd.read_csv(tmp_path / "artifacts" / "class_histogram.csv", index_col="class")
    assert histogram.sum().to_dict() == {"train": 42, "val": 21, "test": 14}
    for name in ("learning_curves.png", "class_histogram.png", "confusion_matrix_val_best.png"):
        assert_png(tmp_path / "artifacts" / name)
