"""Test-time augmentation (TTA), the metrics of its averaged predictions, and their reports.

Each mode averages the softmax over its views of an image:

- `none`: the image as the model saw it in training (resized and normalised);
- `hflip`: the image and its mirror;
- `tencrop`: the usual FER protocol, the four corner crops and the centre crop plus their
  mirrors. Our networks take their full training input size (FER papers crop 44 from 48 and
  train on crops), so the image is first upscaled by `scale` (48 -> 54 at 1.125) and the ten
  crops are taken at the input size. The upscaling is bilinear on the normalised tensor: the
  same as upscaling the pixels for scale01 and standardize, close to it for minmax.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)
from torchvision.transforms.v2.functional import ten_crop

from fer_lab.training.run_artifacts import write_confusion_matrix

TTA_MODES = ("none", "hflip", "tencrop")


def tta_views(images: torch.Tensor, mode: str, scale: float = 1.125) -> list[torch.Tensor]:
    """The views of a batch [B, C, H, W] that `mode` averages over, each [B, C, H, W].

    tencrop's order is torchvision's: top-left, top-right, bottom-left, bottom-right, centre,
    then the same five of the mirrored image.
    """
    if mode == "none":
        return [images]
    if mode == "hflip":
        return [images, images.flip(-1)]
    if mode == "tencrop":
        height, width = images.shape[-2:]
        size = (round(height * scale), round(width * scale))
        upscaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return list(ten_crop(upscaled, [height, width]))
    raise ValueError(f"unknown TTA mode {mode!r}; expected one of {TTA_MODES}")


@torch.no_grad()
def predict_proba(
    net: nn.Module, loader: DataLoader, mode: str, scale: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [N, K], averaged over the TTA views, and the labels [N], on the CPU."""
    net.eval().to(device)
    probabilities, labels = [], []
    for images, targets in loader:
        views = tta_views(images.to(device), mode, scale)
        total = sum(torch.softmax(net(view).float(), dim=1) for view in views)
        probabilities.append((total / len(views)).cpu())
        labels.append(targets.cpu())
    return torch.cat(probabilities), torch.cat(labels)


@dataclass
class Scores:
    accuracy: float
    f1_macro: float
    top2_accuracy: float
    nll: float  # of the averaged probabilities: how confident TTA leaves the model
    per_class: pd.DataFrame  # precision, recall, f1, support; one row per class
    confusion: np.ndarray  # counts; rows are true classes, columns predicted ones

    def metrics(self) -> dict[str, float]:
        """Flat metric names (`acc`, `f1/<class>`, ...) as logged under `eval/<split>/<tta>/`."""
        values = {
            "acc": self.accuracy,
            "f1_macro": self.f1_macro,
            "top2_acc": self.top2_accuracy,
            "nll": self.nll,
        }
        for metric in ("precision", "recall", "f1"):
            for name, value in self.per_class[metric].items():
                values[f"{metric}/{name}"] = float(value)
        return values


def score(probabilities: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> Scores:
    """The same torchmetrics definitions as training's `test/*` metrics, plus top-2 and NLL."""
    n = len(classes)
    support = np.bincount(labels.numpy(), minlength=n)
    per_class = pd.DataFrame(
        {
            "precision": multiclass_precision(probabilities, labels, n, average=None).numpy(),
            "recall": multiclass_recall(probabilities, labels, n, average=None).numpy(),
            "f1": multiclass_f1_score(probabilities, labels, n, average=None).numpy(),
            "support": support,
        },
        index=pd.Index(classes, name="class"),
    )
    picked = probabilities[torch.arange(len(labels)), labels]
    return Scores(
        accuracy=float(multiclass_accuracy(probabilities, labels, n, average="micro")),
        f1_macro=float(multiclass_f1_score(probabilities, labels, n, average="macro")),
        top2_accuracy=float(
            multiclass_accuracy(probabilities, labels, n, average="micro", top_k=min(2, n))
        ),
        nll=float(-picked.clamp_min(1e-12).log().mean()),
        per_class=per_class,
        confusion=multiclass_confusion_matrix(probabilities, labels, n).numpy(),
    )


def write_reports(
    scores: Scores,
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    folder: Path,
    title: str,
) -> list[Path]:
    """Confusion matrices (counts, row-normalised), per-class CSV, predictions and report.md."""
    files = write_confusion_matrix(scores.confusion, classes, folder / "confusion_matrix", title)
    stem = folder / "confusion_matrix_normalised"
    files += write_confusion_matrix(scores.confusion, classes, stem, title, normalise=True)
    per_class_path = folder / "per_class.csv"
    scores.per_class.to_csv(per_class_path, float_format="%.4f")
    predictions = pd.DataFrame(probabilities.numpy(), columns=[f"p_{name}" for name in classes])
    predictions.insert(0, "predicted", [classes[i] for i in probabilities.argmax(1)])
    predictions.insert(0, "label", [classes[i] for i in labels])
    predictions_path = folder / "predictions.csv"
    predictions.to_csv(predictions_path, index_label="index", float_format="%.6f")
    report_path = folder / "report.md"
    report_path.write_text(markdown_report(scores, title))
    return [*files, per_class_path, predictions_path, report_path]


def markdown_report(scores: Scores, title: str) -> str:
    """The headline numbers and the per-class table, readable in MLflow's artifact view."""
    lines = [
        f"# {title}",
        "",
        f"images: {int(scores.per_class['support'].sum())}, accuracy: {scores.accuracy:.4f}, "
        f"macro-F1: {scores.f1_macro:.4f}, top-2 accuracy: {scores.top2_accuracy:.4f}, "
        f"NLL: {scores.nll:.4f}",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in scores.per_class.iterrows():
        lines.append(
            f"| {name} | {row.precision:.4f} | {row.recall:.4f} | {row.f1:.4f} | "
            f"{int(row.support)} |"
        )
    return "\n".join(lines) + "\n"
