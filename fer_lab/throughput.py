"""The measurements behind `python -m fer_lab.bench`: fer_lab's training path against a plain
PyTorch loop on the same model and tensors, the two data pipelines, and dataset load times."""

import resource
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from fer_lab.config import on_gpu
from fer_lab.data import FERDataModule
from fer_lab.training import build_job, supported_precision


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


@dataclass
class Throughput:
    images_per_s: float
    seconds: float
    peak_memory_mb: float


class StepTimer(pl.Callback):
    """Times training from batch `warmup` to the end of training, which includes the
    epoch-end checkpoints and logging but not Lightning's start-up or the run's teardown."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.started: float | None = None
        self.images = 0
        self.seconds = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            sync(self.device)
            reset_peak_memory(self.device)
            self.started = time.perf_counter()
        if self.started is not None:
            self.images += len(batch[1])

    def on_train_end(self, trainer, module) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.started


def fer_lab_training(cfg: DictConfig, warmup: int, steps: int) -> Throughput:
    """`python -m fer_lab.train`'s own path (DataModule, LightningModule, every configured
    callback, the MLflow logger) over one epoch of `warmup + steps` batches, validation off."""
    device = device_of(cfg)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = warmup + steps
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.num_sanity_val_steps = 0
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        cfg.test = False
    pl.seed_everything(cfg.seed)
    timer = StepTimer(warmup, device)
    job = build_job(cfg, extra_callbacks=[timer])
    job.trainer.fit(job.module, datamodule=job.datamodule)
    return Throughput(timer.images / timer.seconds, timer.seconds, peak_memory_mb(device))


def plain_training(cfg: DictConfig, datamodule: FERDataModule, warmup: int, steps: int):
    """The hand-written reference: the same network, optimiser, loss, batch size, precision and
    memory format, fed from normalised tensors already in memory; nothing else."""
    device = device_of(cfg)
    torch.manual_seed(cfg.seed)
    net = instantiate(cfg.model).to(device)
    channels_last = bool(cfg.speed.channels_last)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    loss_fn = instantiate(cfg.loss, class_counts=datamodule.class_counts("train")).to(device)
    images, labels = in_memory_batches(datamodule, device, warmup + steps)
    if channels_last:
        images = [batch.contiguous(memory_format=torch.channels_last) for batch in images]
    autocast, scaler = precision_context(supported_precision(cfg.trainer.precision), device)
    net.train()
    for step, (x, y) in enumerate(zip(images, labels, strict=True)):
        if step == warmup:
            sync(device)
            reset_peak_memory(device)
            started = time.perf_counter()
        with autocast:
            loss = loss_fn(net(x), y) + net.regularization_loss()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    sync(device)
    seconds = time.perf_counter() - started
    return Throughput(steps * len(labels[0]) / seconds, seconds, peak_memory_mb(device))


def in_memory_batches(
    datamodule: FERDataModule, device: torch.device, count: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`count` training batches, transformed once up front and kept on `device`."""
    images, labels = [], []
    for x, y in cycle(datamodule.train_dataloader(), count):
        images.append(x.to(device))
        labels.append(y.to(device))
    return images, labels


def cycle(batches: Iterable, count: int) -> Iterable:
    taken = 0
    while taken < count:
        for batch in batches:
            yield batch
            taken += 1
            if taken == count:
                return


def precision_context(
    precision: str, device: torch.device
) -> tuple[AbstractContextManager, torch.amp.GradScaler]:
    """Autocast and a gradient scaler matching Lightning's precision plugin for `precision`."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    context = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    return context, scaler


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
