"""What `python -m fer_lab.bench` measures besides training (fer_lab/overhead.py): the two
data pipelines and dataset load times; and the helpers both share."""

import resource
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from fer_lab.config import on_gpu
from fer_lab.data import FERDataModule


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


def device_of(cfg: DictConfig) -> torch.device:
    return torch.device("cuda" if on_gpu(cfg.trainer.accelerator) else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """The GPU's peak allocation since the last reset, or the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


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
