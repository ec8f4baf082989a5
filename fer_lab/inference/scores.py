"""The metrics of a checkpoint's predictions on a split: the same torchmetrics definitions as
training's `test/*` metrics, plus top-2 accuracy and the NLL of the (TTA-averaged) probabilities."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


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
