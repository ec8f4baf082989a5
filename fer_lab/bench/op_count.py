"""Counting the torch ops a piece of code runs: the host-side cost of GPU code, measured on a CPU.

On a GPU each op is a kernel launch with some 10-20 µs of host work, so code whose device time
is small (augmenting 48x48 faces, a tiny network's step) runs as fast as its op count allows.
Counts do not drift with a shared machine's load, where timings do: tests assert on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PLAIN = (
    bool,
    int,
    float,
    complex,
    str,
    torch.dtype,
    torch.device,
    torch.memory_format,
    torch.layout,
)
# Ops that only make views or read metadata: no kernel runs for them on a GPU.
VIEWS = {
    "view",
    "slice",
    "select",
    "expand",
    "unsqueeze",
    "squeeze",
    "t",
    "transpose",
    "alias",
    "detach",
}


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while it is active, by name (`aten.add.Tensor` -> `add`).

    `kernels` leaves out views and metadata ops; `signature` lists each op with its shapes and
    non-tensor arguments, which two calls of a CUDA-graph step must share exactly."""

    def __init__(self, record: bool = False) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.record = record
        self.signature: list[tuple[Any, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if self.record:
            self.signature.append(
                (str(func), *(_describe(a) for a in (*args, *(kwargs or {}).items())))
            )
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def kernels(self) -> int:
        return sum(n for name, n in self.ops.items() if name.rstrip("_") not in VIEWS)


def _describe(value: Any) -> Any:
    """A tensor as (dtype, shape, device); Python values as they are; containers recursively."""
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), value.device.type)
    if isinstance(value, list | tuple):
        return tuple(_describe(v) for v in value)
    if value is None or isinstance(value, PLAIN):
        return value
    return type(value).__name__  # e.g. the profiler's record handles


def count_ops(run: Callable[[], Any]) -> OpCounter:
    """The ops `run()` dispatches."""
    with OpCounter() as counter:
        run()
    return counter
