"""What fer_lab's training path costs over a hand-written PyTorch loop, timed in one of two ways.

Lockstep (the default on a CPU): a shared machine's speed drifts by 20% and more between runs
of seconds (measured here: five fits of the same plain loop in one process, between fer_lab
fits, 517 to 956 img/s), which would swamp a 5% budget if the two sides ran one after the
other. So both run in one fit: a callback runs one step of the plain loop beside each of
fer_lab's steps, and each side's step times are taken side by side, under the same conditions.

Free-running (the default on a GPU): a GPU runs kernels while the host queues the next ones.
Lockstep's syncs around every step stop the host from running ahead, hiding exactly the host
overhead that matters there: whether fer_lab's host work (hooks, logging, the next batch) stays
under the device's work or starves it. So each side runs alone, synced only where its clock
starts and stops: fer_lab's real fit over whole epochs (each epoch's start, where the on-device
path augments the epoch, included) after a warm-up epoch, then, once it is released, the plain
loop for as many steps, with the same compile and CUDA-graph settings. They run one after the
other, so drift between them is unguarded: `--repeats` takes the median of fits.
"""

import statistics
import time

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from fer_lab.bench.throughput import (
    Throughput,
    cycle,
    device_of,
    one_epoch,
    peak_memory_mb,
    precision_context,
    release_memory,
    reset_peak_memory,
    sync,
)
from fer_lab.data import FERDataModule
from fer_lab.training.cuda_graph import GraphedStep, tensor_learning_rates
from fer_lab.training.job import build_job, keep_deterministic_fast, supported_precision

FREE_EPOCHS = 2  # timed whole epochs of the free-running comparison, after a warm-up epoch


class PlainLoop:
    """The reference: `cfg`'s network, optimiser, loss, batch size, precision, memory format,
    compilation and torch settings, fed from normalised batches made up front; nothing else."""

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
        if cfg.speed.compile:
            self.net.compile()  # in place, as FERLitModule does
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
        self.graphed: GraphedStep | None = None
        if cfg.speed.get("cuda_graphs"):  # as FERLitModule: fused, the rate a tensor
            self.optimizer = instantiate(cfg.optimizer)(params=self.net.parameters(), fused=True)
            tensor_learning_rates(self.optimizer)
            x, y = self.batches[0]
            self.graphed = GraphedStep(self._graphable_step, self.net, self.optimizer, None, x, y)

    def _graphable_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self.autocast:
            loss = self.loss_fn(self.net(x), y) + self.net.regularization_loss()
        loss.backward()
        self.optimizer.step()

    def step(self, index: int) -> int:
        """One training step on batch `index`; returns its number of images (no sync)."""
        x, y = self.batches[index]
        if self.graphed is not None and self.graphed.fits(x):
            self.graphed(x, y)
            return len(y)
        with self.autocast:
            loss = self.loss_fn(self.net(x), y) + self.net.regularization_loss()
        self.optimizer.zero_grad(set_to_none=self.graphed is None)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return len(y)


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
        """Both sides share the process at once: each gets the peak memory of the two."""
        n, peak = len(self.fer_lab_steps), peak_memory_mb(self.device)
        wall = self.ended - self.started
        between = wall - sum(self.fer_lab_steps) - sum(self.plain_steps)
        plain = n * statistics.median(self.plain_steps)
        # Each fer_lab step against the plain step beside it, which ran in the same moment.
        pairs = zip(self.fer_lab_steps, self.plain_steps, strict=True)
        fer_lab = plain * statistics.median(f / p for f, p in pairs) + between
        return Throughput(self.images / fer_lab, n, peak), Throughput(self.images / plain, n, peak)


class FreeRunning(pl.Callback):
    """Clocks fer_lab's fit from the start of its second epoch to the end of training, syncing
    the device only there, so the host runs ahead as in training and the span holds whole
    epochs: each one's start (the on-device augmentation of the epoch), the steps and
    everything between them (hooks, logging, the epoch-end checkpoints)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps = self.images = self.first_step = 0
        self.started = self.ended = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == 1:
            sync(self.device)
            self.started = time.perf_counter()
            self.first_step = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch >= 1:
            self.images += len(batch[1])  # a shape: no sync

    def on_train_end(self, trainer, module) -> None:
        sync(self.device)
        self.ended = time.perf_counter()
        self.steps = trainer.global_step - self.first_step  # optimizer steps


def compare_training(
    cfg: DictConfig, warmup: int, steps: int | None
) -> tuple[Throughput, Throughput]:
    """(fer_lab, plain) throughput in lockstep over the steps after `warmup` of one epoch
    (`steps` of them, or all for None), validation off: `python -m fer_lab.train`'s own path
    (DataModule, LightningModule, every configured callback, the MLflow logger, the epoch-end
    checkpoints) against the plain loop."""
    one_epoch(cfg, warmup, steps)
    reset_peak_memory(device_of(cfg))
    plain = PlainLoop(cfg, None if steps is None else warmup + steps)
    pl.seed_everything(cfg.seed)
    lockstep = Lockstep(plain, warmup)
    job = build_job(cfg, extra_callbacks=[lockstep])
    job.trainer.fit(job.module, datamodule=job.datamodule)
    return lockstep.results()


def compare_training_free(
    cfg: DictConfig, warmup: int, steps: int | None
) -> tuple[Throughput, Throughput]:
    """(fer_lab, plain) throughput free-running over FREE_EPOCHS whole epochs of `steps`
    batches (None: the whole split) after a warm-up epoch: fer_lab's fit, then, once it is
    released, as many plain steps after `warmup` untimed ones. Each side's peak memory is its
    own: the peak is reset before that side builds its data and model."""
    one_epoch(cfg, 0, steps)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1 + FREE_EPOCHS
    device = device_of(cfg)
    reset_peak_memory(device)
    pl.seed_everything(cfg.seed)
    clock = FreeRunning(device)
    job = build_job(cfg, extra_callbacks=[clock])
    job.trainer.fit(job.module, datamodule=job.datamodule)
    if clock.steps == 0:
        raise ValueError("the timed epochs have no steps")
    seconds = clock.ended - clock.started
    fer_lab = Throughput(clock.images / seconds, clock.steps, peak_memory_mb(device))
    del job
    release_memory(device)
    reset_peak_memory(device)
    per_epoch = clock.steps // FREE_EPOCHS
    plain = PlainLoop(cfg, per_epoch)
    for index in range(warmup):
        plain.step(index % per_epoch)
    sync(device)
    started = time.perf_counter()
    images = sum(plain.step(index % per_epoch) for index in range(clock.steps))
    sync(device)
    seconds = time.perf_counter() - started
    return fer_lab, Throughput(images / seconds, clock.steps, peak_memory_mb(device))
