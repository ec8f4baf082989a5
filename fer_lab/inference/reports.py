"""The files an evaluation leaves: confusion matrices, per-class table, every prediction and a
Markdown report, readable in MLflow's artifact view."""

from pathlib import Path

import pandas as pd
import torch

from fer_lab.inference.scores import Scores
from fer_lab.tracking.confusion import write_confusion_matrix


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
