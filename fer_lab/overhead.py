"""What fer_lab's training path costs over a hand-written PyTorch loop, measured in lockstep.

A shared machine's speed drifts by 20% and more between runs of seconds (measured here: five
fits of the same plain loop in one process, between fer_lab fits, 517 to 956 img/s), which
would swamp a 5% budget if the two sides ran one after the other. So both run in one fit: a
callback runs one step of the plain loop beside each of fer_lab's steps, and each side's
step times are taken side by side, under the same conditions.
"""

import statistics
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from fer_lab.data import FERDataModule
from fer_lab.throughput import cycle, device_of, peak_memory_mb, reset_peak_memory, sync
from fer_lab.training import build_job, keep_deterministic_fast, supported_precision


@dataclass
class Throughput:
    images_per_s: float
    steps: int
    peak_memory_mb: float


class PlainLoop:
    """The reference: the same network, optimiser, loss, batch size, precision, memory format
    and torch settings as `cfg`, fed from normalised batches made up front; nothing else."""

    def __init__(self, cfg: DictConfig, batches: int | None) -> None:
        """`batches` made up front (None: an epoch's worth)."""
        self.device = device_of(cfg)
        torch.use_deterministic_algorithms(bool(cfg.trainer.get("deterministic")))
        keep_deterministic_fast()
        torch.manual_seed(cfg.seed)
        datamodule: FERDataModule = instantiate(cfg.data)
        self.net = instantiate(cfg.model).to(self.device)
        memory_format = torch.channels_last if cfg.speed.channels_last else torch.preserve_format
        self.net = self.net.to(memory_format=memory_format).train()
        self.optimizer = instantiate(cfg.optimizer)(params=self.net.parameters())
        self.loss_fn = instantiate(cfg.loss, class_counts=datamodule.class_counts("train"))
        self.loss_fn = self.loss_fn.to(self.device)
        loader = datamodule.train_dataloader()
        self.batches = [
            (x.to(self.device).contiguous(memory_format=memory_format), y.to(self.device))
            for x, y in cycle(loader, len(loader) if batches is None else batches)
        ]
        precision = supported_precision(cfg.trainer.precision)
        self.autocast, self.scaler = precision_context(precision, self.device)

    def step(self, index: int) -> int:
        """One training step on batch `index`; returns its number of images."""
        x, y = self.batches[index]
        with self.autocast:
            loss = self.loss_fn(self.net(x), y) + self.net.regularization_loss()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return len(y)


def precision_context(
    precision: str, device: torch.device
) -> tuple[AbstractContextManager, torch.amp.GradScaler]:
    """Autocast and a gradient scaler matching Lightning's precision plugin for `precision`."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    context = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    return context, scaler


class Lockstep(pl.Callback):
    """Times each fer_lab step (hooks included) and one plain step beside it: before it on
    even steps, after it on odd ones, so neither side always runs on the other's caches.

    fer_lab's time is its steps plus everything between them and after the last (fetching
    and transforming the next batch, logging, the epoch-end checkpoints), with the plain
    steps taken out. Plain steps count at their median time and fer_lab's at the median
    ratio to the plain step beside them, so a slow moment of the machine does not count
    against whichever side it hit.
    """

    def __init__(self, plain: PlainLoop, warmup: int) -> None:
        self.plain, self.warmup, self.device = plain, warmup, plain.device
        self.fer_lab_steps: list[float] = []
        self.plain_steps: list[float] = []
        self.images = 0
        self.started = self.ended = self.step_started = 0.0

    def _plain_step(self, batch_idx: int) -> None:
        sync(self.device)
        started = time.perf_counter()
        self.plain.step(batch_idx)
        sync(self.device)
        if batch_idx >= self.warmup:
            self.plain_steps.append(time.perf_counter() - started)

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            sync(self.device)
            reset_peak_memory(self.device)
            self.started = time.perf_counter()
        if batch_idx % 2 == 0:
            self._plain_step(batch_idx)
        sync(self.device)
        self.step_started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        sync(self.device)
        if batch_idx >= self.warmup:
            self.fer_lab_steps.append(time.perf_counter() - self.step_started)
            self.images += len(batch[1])
        if batch_idx % 2 == 1:
            self._plain_step(batch_idx)

    def on_train_end(self, trainer, module) -> None:
        sync(self.device)
        self.ended = time.perf_counter()

    def results(self) -> tuple[Throughput, Throughput]:
        n, peak = len(self.fer_lab_steps), peak_memory_mb(self.device)
        wall = self.ended - self.started
        between = wall - sum(self.fer_lab_steps) - sum(self.plain_steps)
        plain = n * statistics.median(self.plain_steps)
        # Each fer_lab step against the plain step beside it, which ran in the same moment.
        pairs = zip(self.fer_lab_steps, self.plain_steps, strict=True)
        fer_lab = plain * statistics.median(f / p for f, p in pairs) + between
        return Throughput(self.images / fer_lab, n, peak), Throughput(self.images / plain, n, peak)


def compare_training(
    cfg: DictConfig, warmup: int, steps: int | None
) -> tuple[Throughput, Throughput]:
    """(fer_lab, plain) throughput, step for step, over the steps after `warmup` of one epoch
    (`steps` of them, or the whole epoch for None), validation off: `python -m fer_lab.train`'s
    own path (DataModule, LightningModule, every configured callback, the MLflow logger, the
    epoch-end checkpoints) against the plain loop."""
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = 1.0 if steps is None else warmup + steps
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.num_sanity_val_steps = 0
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        cfg.test = False
    plain = PlainLoop(cfg, None if steps is None else warmup + steps)
    pl.seed_everything(cfg.seed)
    lockstep = Lockstep(plain, warmup)
    job = build_job(cfg, extra_callbacks=[lockstep])
    job.trainer.fit(job.module, datamodule=job.datamodule)
    return lockstep.results()
