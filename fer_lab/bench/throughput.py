"""What `python -m fer_lab.bench` measures besides training (fer_lab/bench/overhead.py): the two
data pipelines and dataset load times; and the helpers both share, with those the two training
timings share (the one-epoch config, device sync, peak memory, precision)."""

import gc
import re
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from fer_lab.core.config import on_gpu
from fer_lab.data import FERDataModule


@dataclass
class Throughput:
    """One side of a training comparison: its speed, the steps timed, its peak memory."""

    images_per_s: float
    steps: int
    peak_memory_mb: float


def bench_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The training config `python -m fer_lab.train <overrides>` would run, writing into
    `output_dir` (Hydra's run folder is not created outside `hydra.main`)."""
    with initialize_config_module("fer_lab.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.overrides.task = overrides
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def one_epoch(cfg: DictConfig, warmup: int, steps: int | None) -> None:
    """Set `cfg` to fit `warmup + steps` batches of one epoch (None: all of it) and nothing
    else: no validation, no test, no progress bar or model summary."""
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = 1.0 if steps is None else warmup + steps
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.num_sanity_val_steps = 0
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        cfg.test = False


def device_of(cfg: DictConfig) -> torch.device:
    return torch.device("cuda" if on_gpu(cfg.trainer.accelerator) else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """The GPU's peak allocation since `reset_peak_memory`, or on a CPU the process's peak RSS
    (Linux's VmHWM: Python and torch included) since then."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak. On a CPU, Linux resets VmHWM to the current RSS on a write of "5" to
    /proc/self/clear_refs; where that is refused, the peak stays the process's peak so far."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def release_memory(device: torch.device) -> None:
    """Free what the last measurement dropped before the next one starts its peak: Lightning's
    objects refer to each other (only a collection frees them) and CUDA caches freed blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def precision_context(
    precision: str, device: torch.device
) -> tuple[AbstractContextManager, torch.amp.GradScaler]:
    """Autocast and a gradient scaler matching Lightning's precision plugin for `precision`."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    context = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    return context, scaler


def cycle(batches: Iterable, count: int) -> Iterable:
    taken = 0
    while taken < count:
        for batch in batches:
            yield batch
            taken += 1
            if taken == count:
                return


def pipeline_throughput(datamodule: FERDataModule, batches: int) -> float:
    """Images per second the training loader delivers, the model left out (first batch, which
    starts workers or moves data to the device, not timed)."""
    loader = datamodule.train_dataloader()
    device = datamodule.device()
    iterator = iter(cycle(loader, batches + 1))
    next(iterator)
    started, images = time.perf_counter(), 0
    for x, y in iterator:
        x = x.to(device, non_blocking=True)
        images += len(y)
    sync(device)
    return images / (time.perf_counter() - started)


def timed(load: Callable[[], object]) -> float:
    started = time.perf_counter()
    load()
    return time.perf_counter() - started
