"""A whole training step (forward, loss, backward, optimizer step, the epoch's tally) as one
CUDA graph: a step then costs the host one copy into static buffers and one replay.

What a replay must see change lives in device tensors the graph reads: the batch (copied into
the static buffers), the learning rate (a tensor that the schedulers `fill_`, with fused
optimizers that take it as a tensor) and the tally. A Python number used by the step would be
frozen into the graph; tests/test_cuda_graphs.py shows on a CPU that two steps dispatch exactly
the same ops with the same arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

Tensor = torch.Tensor
WARMUP_STEPS = 3  # eager steps before capture: optimizer state, cuDNN's algorithm choices


def tensor_learning_rates(optimizer: torch.optim.Optimizer) -> None:
    """Each param group's learning rate as a 0-dim tensor on its parameters' device, which
    LR schedulers update in place (`fill_`) and fused optimizers read on the device."""
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group["lr"] = torch.tensor(float(group["lr"]), device=device)


class GraphedStep:
    """`step(images, labels)` captured once for a batch shape and replayed for every batch of
    that shape. Warm-up steps run on the first batch to create the optimizer state; the
    weights, buffers, optimizer state and tally they changed are then restored, so the graph
    leaves training exactly as eager steps would. (`tally_state` None: a step without one, the
    bench's plain loop.)"""

    def __init__(
        self,
        step: Callable[[Tensor, Tensor], None],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        tally_state: Tensor | None,
        images: Tensor,
        labels: Tensor,
    ) -> None:
        self.images, self.labels = images.clone(), labels.clone()
        weights = copy.deepcopy(model.state_dict())
        tally = None if tally_state is None else tally_state.clone()
        autocast = _without_cache()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast:
            for _ in range(WARMUP_STEPS):
                optimizer.zero_grad(set_to_none=True)
                step(self.images, self.labels)
        torch.cuda.current_stream().wait_stream(side)
        model.load_state_dict(weights)  # in place: the graph will read these tensors
        _reset_optimizer_state(optimizer)
        if tally_state is not None:
            tally_state.copy_(tally)
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)  # gradients are then allocated by the graph
        with torch.cuda.graph(self.graph), autocast:
            step(self.images, self.labels)

    def fits(self, images: Tensor) -> bool:
        return images.shape == self.images.shape

    def __call__(self, images: Tensor, labels: Tensor) -> None:
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.graph.replay()


def _reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Back to a fresh optimizer's state (moments, step counts) without replacing the tensors
    warm-up created: zeroed in place, so the captured step updates them from zero."""
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                value.zero_()


def _without_cache() -> torch.autocast:
    """The autocast in force (Lightning's mixed precision), without its weight-cast cache,
    which a graph capture cannot hold."""
    return torch.autocast(
        "cuda",
        dtype=torch.get_autocast_dtype("cuda"),
        enabled=torch.is_autocast_enabled("cuda"),
        cache_enabled=False,
    )
