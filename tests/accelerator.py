"""A stand-in GPU for the device tests on a machine without one.

`OnAccelerator` tensors hold their data on the CPU but obey CUDA's rules where fer_lab's code
could break them: an op that mixes them with a CPU tensor of one or more dimensions fails as
on a GPU, `.numpy()` refuses, and `.cpu()` / `.to("cpu")` give a plain CPU tensor. Every call
that would make the host wait for a GPU (`.item()`, `bool()`, `.tolist()`, a copy to the
CPU, `nonzero`, `unique`, a tensor made from Python data) is recorded while `host_syncs()` is
open, so tests can show which code paths leave the GPU's queue alone.

The stand-in reports its device as the CPU, so code that moves tensors to `x.device` or
`torch.device("cpu")` takes them off it: enough for the device-crossing points fer_lab's tests
drive, not a whole `Trainer.fit` (torchmetrics' reset moves states to their `.device`).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from fer_lab.data import FERDataModule
from fer_lab.data.on_device.batches import DeviceBatches

SYNCING = {
    "item",
    "tolist",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "cpu",
    "nonzero",
    "unique",
    "_unique2",
    "unique_consecutive",
    "masked_select",
    "bincount",
}
FROM_PYTHON = {"tensor", "as_tensor", "asarray"}
# Calls torch allows across devices: indexing by (or assigning from) a CPU tensor copies it
# over; the rest are bookkeeping that computes nothing.
CROSS_DEVICE = {
    "__getitem__",
    "__setitem__",
    "__get__",
    "__set__",
    "_has_compatible_shallow_copy_type",
}
_recorded: list[str] | None = None


def _record(name: str) -> None:
    if _recorded is not None:
        _recorded.append(name)


def _to_cpu(func: Any, args: tuple, kwargs: dict) -> bool:
    if getattr(func, "__name__", "") != "to":
        return False
    targets = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
    return bool(targets) and torch.device(targets[0]).type == "cpu"


class OnAccelerator(torch.Tensor):
    """A tensor that behaves as if it lived on a GPU (see the module docstring)."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_host = [t for t in tensors if not isinstance(t, cls) and t.dim() > 0]
        if on_host and name not in CROSS_DEVICE:
            raise RuntimeError(
                f"{name}: Expected all tensors to be on the same device, but found at least two "
                "devices, cuda:0 and cpu!"
            )
        if name == "numpy":
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu()")
        leaving = name == "cpu" or _to_cpu(func, args, kwargs)
        if name in SYNCING or leaving:
            _record("to(cpu)" if name == "to" else name)
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        if leaving:
            return tree_map(_plain, result)
        return torch._tensor._convert(result, cls)


def _plain(value: Any) -> Any:
    return value.as_subclass(torch.Tensor) if isinstance(value, OnAccelerator) else value


def to_accelerator(value: Any) -> Any:
    """Tensors in `value` (a tensor, or a tuple/list/dict of them) moved to the stand-in GPU."""

    def move(tensor: Any) -> Any:
        if isinstance(tensor, torch.Tensor) and not isinstance(tensor, OnAccelerator):
            return tensor.as_subclass(OnAccelerator)
        return tensor

    return tree_map(move, value)


def module_to_accelerator(module: torch.nn.Module) -> torch.nn.Module:
    """Parameters, buffers and torchmetrics states moved to the stand-in GPU, in place."""
    # New Parameter objects (not `.data` swaps), so the parameters themselves change class.
    before = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        return module._apply(to_accelerator)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(before)


class _MadeFromPython(TorchFunctionMode):
    """Records tensors made from Python data: on a GPU, each is a host-to-device copy."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in FROM_PYTHON and args and not isinstance(args[0], torch.Tensor):
            _record(f"{name}(python data)")
        return func(*args, **kwargs)


@contextmanager
def host_syncs() -> Iterator[list[str]]:
    """The names of the syncing calls made inside the block, in order."""
    global _recorded
    _recorded = []
    try:
        with _MadeFromPython():
            yield _recorded
    finally:
        _recorded = None


class AcceleratorDataModule(FERDataModule):
    """The on-device data path with its splits on the stand-in GPU, as on a CUDA trainer.

    Lightning moves each batch to the module's device (`.to(cpu)`: a plain tensor) before a
    step, so training runs; code that iterates the loaders itself gets the GPU's tensors.
    """

    def _device_batches(self, split: str, train: bool) -> DeviceBatches:
        batches = super()._device_batches(split, train)
        batches.images, batches.labels, batches.ready = to_accelerator(
            (batches.images, batches.labels, batches.ready)
        )
        return batches
