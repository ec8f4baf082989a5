"""Losses over logits, each optionally weighted per class from the training split's counts."""

from collections.abc import Sequence

import torch
from torch import nn


def capped_inverse_frequency(class_counts: Sequence[int], cap: float) -> torch.Tensor:
    """Seed 002's class weights: min(max_count / count, cap); absent classes get the cap."""
    counts = torch.tensor(class_counts, dtype=torch.float32)
    return torch.where(counts > 0, counts.max() / counts.clamp(min=1), torch.tensor(cap)).clamp(
        max=cap
    )


class _ClassWeighted(nn.Module):
    """Holds the per-class weights (ones unless `max_class_weight` is set) and the label
    smoothing every loss here takes."""

    def __init__(
        self,
        class_counts: Sequence[int],
        label_smoothing: float = 0.0,
        max_class_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        if max_class_weight is None:
            weights = torch.ones(len(class_counts))
        else:
            weights = capped_inverse_frequency(class_counts, max_class_weight)
        self.register_buffer("class_weights", weights)


class CrossEntropyLoss(_ClassWeighted):
    """Softmax cross-entropy with optional label smoothing and class weights."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(
            logits, target, weight=self.class_weights, label_smoothing=self.label_smoothing
        )


class MSEOneHotLoss(_ClassWeighted):
    """Seed 003's loss: mean squared error between softmax(logits) and the one-hot target."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        onehot = nn.functional.one_hot(target, num_classes).to(logits.dtype)
        onehot = onehot * (1 - self.label_smoothing) + self.label_smoothing / num_classes
        per_sample = (logits.softmax(dim=1) - onehot).pow(2).mean(dim=1)
        weights = self.class_weights[target]
        return (per_sample * weights).sum() / weights.sum()
