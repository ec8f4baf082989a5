"""Run figures: learning curves, class histograms, the most confused validation images, and the
curve history surviving a resume from `last.ckpt`; a leaderboard's charts, every text inside
the figure and off the data."""

import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fer_lab.tracking import figures
from fer_lab.tracking.figures import (
    DATA_WIDTH_IN,
    LABEL_CHARS,
    epoch_ticks,
    middle_ellipsis,
    most_confused_pair,
    ranking_figure,
    val_curves_figure,
    write_class_histogram,
    write_learning_curves,
    write_misclassified_grid,
    write_ranking,
    write_val_curves,
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


def test_learning_curves_count_epochs_from_1_legend_off_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[Figure] = []
    save = figures.save_png

    def keep_and_save(figure: Figure, stem: Path) -> Path:
        drawn.append(figure)
        return save(figure, stem)

    monkeypatch.setattr(figures, "save_png", keep_and_save)
    history = {0: {"train/loss": 1.5, "train/acc": 0.3, "val/loss": 1.2, "val/acc": 0.4}}
    write_learning_curves(history, tmp_path / "curves", "one epoch")
    (legend,) = drawn[0].legends
    for axes in drawn[0].axes:
        assert axes.get_xticks().tolist() == [1] and axes.get_xlim() == (0.5, 1.5)
        assert all(line.get_xdata().tolist() == [1] for line in axes.lines)
        assert not legend.get_window_extent().overlaps(axes.get_window_extent())


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


@dataclass
class Row:
    """A leaderboard entry as the charts read it."""

    name: str
    val_acc_best: float
    test_acc: float
    val_curve: list[float] = field(default_factory=list)


SHARED = "dataset=synthetic trainer=cpu trainer.max_epochs=1 ++trainer.limit_train_batches=4"
GRID = [("tf_emotion_cnn", 0.31, 0.29), ("nouri", 0.24, 0.27), ("cntk_simple", 0.17, 0.14)]


def grid(long_names: bool) -> list[Row]:
    """A 3-model, 1-epoch grid's entries, named by their model or by all their overrides."""
    return [
        Row(f"{model} {SHARED}" if long_names else model, best, test, [best])
        for model, best, test in GRID
    ]


def sweep(long_names: bool) -> list[Row]:
    """12 trials ranked, 8 epochs or pruned after 3, the last without any epoch (failed)."""
    rows = []
    for trial in range(12):
        lr, batch = (0.0003, 0.001, 0.003)[trial % 3], (32, 64, 128)[trial % 4 % 3]
        name = f"lr={lr} batch_size={batch}"
        if long_names:
            name = f"optimizer.lr={lr} data.batch_size={batch} model.dropout=0.3 {SHARED}"
        epochs = 0 if trial == 11 else (3 if trial % 4 == 3 else 8)
        curve = [0.6 - 0.02 * trial - 0.3 / (epoch + 1) for epoch in range(epochs)]
        best = max(curve, default=math.nan)
        rows.append(Row(name, best, best - 0.01, curve))
    return sorted(rows, key=lambda row: -row.val_acc_best if row.val_curve else math.inf)


CASES = {
    "grid short": (grid(False), "grid"),
    "grid long": (grid(True), f"multirun 2026-05-01_12-00-00 model=a,b,c {SHARED} seed=1"),
    "sweep short": (sweep(False), "lr_batch"),
    "sweep long": (sweep(True), "optuna study lr_batch_dropout"),
}
CHARTS = {"ranking": ranking_figure, "val_curves": val_curves_figure}


def drawn(figure: Figure) -> Figure:
    """`figure` drawn as its PNG is (layout engine and all), so texts have their places."""
    FigureCanvasAgg(figure).draw()
    return figure


def texts_of(figure: Figure) -> list[Text]:
    """Every text the figure shows: titles, axis and tick labels, legend, bar labels."""
    (axes,) = figure.axes
    texts = [figure._suptitle, axes.title, axes.xaxis.label, axes.yaxis.label, *axes.texts]
    texts += axes.get_xticklabels() + axes.get_yticklabels()
    texts += [text for legend in figure.legends for text in legend.get_texts()]
    return [text for text in texts if text is not None and text.get_text()]


def inside(inner: Bbox, outer: Bbox) -> bool:
    return (
        inner.x0 >= outer.x0 - 0.5
        and inner.y0 >= outer.y0 - 0.5
        and inner.x1 <= outer.x1 + 0.5
        and inner.y1 <= outer.y1 + 0.5
    )


@pytest.mark.parametrize("chart", CHARTS)
@pytest.mark.parametrize("case", CASES)
def test_leaderboard_chart_texts_are_inside_the_figure_and_off_the_data(
    case: str, chart: str
) -> None:
    runs, title = CASES[case]
    figure = drawn(CHARTS[chart](runs, title))
    (axes,) = figure.axes
    for text in texts_of(figure):
        assert inside(text.get_window_extent(), figure.bbox), f"cut: {text.get_text()!r}"
    (legend,) = figure.legends
    assert not legend.get_window_extent().overlaps(axes.get_window_extent())
    assert not legend.get_window_extent().overlaps(figure._suptitle.get_window_extent())
    # The data area keeps its width however long the labels: the figure grows instead.
    assert axes.get_window_extent().width / figure.dpi > 0.8 * DATA_WIDTH_IN
    full_title = title + (": ranking" if chart == "ranking" else ": validation accuracy")
    assert " ".join(figure._suptitle.get_text().split()) == full_title  # wrapped, not cut


@pytest.mark.parametrize("case", CASES)
def test_ranking_rows_are_ranked_shortened_and_apart(case: str) -> None:
    runs, _ = CASES[case]
    (axes,) = drawn(ranking_figure(runs, "t")).axes
    labels = axes.get_yticklabels()
    ranked = [row for row in runs if not math.isnan(row.val_acc_best)]
    assert [label.get_text() for label in labels] == [
        f"{rank}. {middle_ellipsis(row.name)}" for rank, row in enumerate(ranked, 1)
    ]
    assert all(len(label.get_text()) <= LABEL_CHARS + 4 for label in labels)
    tops = [label.get_window_extent() for label in labels]
    assert all(upper.y0 > lower.y1 for upper, lower in itertools.pairwise(tops))


def test_long_labels_widen_the_figure_rather_than_cut() -> None:
    short, long = (ranking_figure(grid(names), "t") for names in (False, True))
    assert long.get_figwidth() > short.get_figwidth() + 1


@pytest.mark.parametrize(("case", "epochs"), [("grid short", 1), ("sweep long", 8)])
def test_val_curves_count_epochs_from_1_on_an_integer_axis(case: str, epochs: int) -> None:
    runs, _ = CASES[case]
    (axes,) = drawn(val_curves_figure(runs, "t")).axes
    ticks = axes.get_xticks()
    assert ticks.tolist() == list(range(1, epochs + 1))
    assert [label.get_text() for label in axes.get_xticklabels()] == [str(t) for t in ticks]
    assert axes.get_xlim() == (0.5, epochs + 0.5)  # one epoch: 1 in the middle, not 0 +-0.04
    for line in axes.lines:
        assert line.get_xdata()[0] == 1
    legend = [text.get_text() for text in axes.figure.legends[0].get_texts()]
    assert legend[0].startswith("1. ") and len(legend) == sum(bool(r.val_curve) for r in runs)


def test_epoch_ticks_are_round_integers_from_1() -> None:
    assert epoch_ticks(1) == [1]
    assert epoch_ticks(10) == list(range(1, 11))
    assert epoch_ticks(12) == [1, 2, 4, 6, 8, 10, 12]
    assert epoch_ticks(100) == [1, *range(10, 101, 10)]
    assert epoch_ticks(37) == [1, 5, 10, 15, 20, 25, 30, 35]


def test_middle_ellipsis_keeps_both_ends() -> None:
    assert middle_ellipsis("nouri") == "nouri"
    name = f"tf_emotion_cnn {SHARED} optimizer.lr=0.003"
    short = middle_ellipsis(name)
    assert len(short) == LABEL_CHARS and "…" in short
    head, tail = short.split("…")
    assert name.startswith(head) and name.endswith(tail) and tail.endswith("lr=0.003")


def test_charts_without_results_say_so(tmp_path: Path) -> None:
    failed = [Row("lr=0.1", math.nan, math.nan)]
    for write, stem in ((write_ranking, "ranking"), (write_val_curves, "val_curves")):
        assert_png(write(failed, tmp_path / stem, "t"))
    figure = drawn(ranking_figure(failed, "t"))
    assert [text.get_text() for text in figure.axes[0].texts] == ["no run has val/acc_best yet"]
