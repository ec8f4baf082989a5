"""Metrics the training module needs beyond torchmetrics'."""

import torch
from torchmetrics import Metric


class BatchMean(Metric):
    """The per-image mean of a loss given as per-batch means, accumulated without a host sync.

    torchmetrics' MeanMetric checks each value for NaN (a sync per step) unless told
    `nan_strategy="disable"`, which in torchmetrics 1.9 also replaces the weights by ones.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, batch_mean: torch.Tensor, batch_size: int) -> None:
        self.total += batch_mean.detach().float() * batch_size
        self.count += batch_size

    def compute(self) -> torch.Tensor:
        return self.total / self.count
