"""The host work fer_lab adds to every training step, measured with a network of almost no compute.

On a GPU a small-image step needs about a millisecond of device time, so the host's work per
step (Lightning's loop, hooks, logging, the metrics) is what bounds it. A CPU shows that work
directly once the network itself costs nothing: a pooled linear layer at batch 8. Both sides
train on the same on-device batches; fer_lab's step is `python -m fer_lab.train`'s (every
configured callback, the MLflow logger, the progress bar), the plain one a hand-written loop.

Reported per step, for each side: the median interval between steps (timed steps), and over a
separate window the torch ops dispatched and the Python calls made, counts that a shared
machine's drift does not move. Fits alternate with plain loops (`repeats` pairs).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from fer_lab.bench.op_count import OpCounter
from fer_lab.bench.overhead import PlainLoop
from fer_lab.bench.throughput import bench_config
from fer_lab.models import FERNet
from fer_lab.training.job import build_job


class PooledLinear(FERNet):
    """Average-pooled to 4x4, then one linear layer: a network whose step costs next to nothing."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__(num_classes, in_channels, input_size)
        self.layers = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * in_channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CallCounter:
    """Python and C function calls made on this thread while active (`sys.setprofile`)."""

    def __init__(self) -> None:
        self.calls = 0

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            self.calls += 1

    def start(self) -> None:
        sys.setprofile(self._profile)

    def stop(self) -> None:
        sys.setprofile(None)


class Window:
    """Counts ops and calls over `steps` consecutive steps (of fer_lab or of the plain loop)."""

    def __init__(self) -> None:
        self.ops, self.calls = OpCounter(), CallCounter()

    def __enter__(self) -> Window:
        self.ops.__enter__()
        self.calls.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.stop()
        self.ops.__exit__(*exc)


class StepClock(pl.Callback):
    """Intervals between the starts of consecutive steps `warmup` .. `warmup + steps`, then
    the ops and calls of the `counted` steps after them."""

    def __init__(self, warmup: int, steps: int, counted: int) -> None:
        self.warmup, self.steps, self.counted = warmup, steps, counted
        self.intervals: list[float] = []
        self.window = Window()
        self.counting = False
        self._last = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, idx: int) -> None:
        now = time.perf_counter()
        if self.warmup < idx <= self.warmup + self.steps:
            self.intervals.append(now - self._last)
        self._last = now
        count_from = self.warmup + self.steps + 1
        if idx == count_from:
            self.window.__enter__()
            self.counting = True
        elif idx == count_from + self.counted:
            self.window.__exit__(None, None, None)
            self.counting = False

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        if self.counting:  # the epoch ended inside the window
            self.window.__exit__(None, None, None)
            self.counting = False
            self.counted = 0


def overhead_config(
    overrides: list[str], output_dir: Path, calls: int, steps_per_call: int
) -> DictConfig:
    """`overrides` with the pooled linear network at batch 8, the on-device path and one
    training epoch of `calls` Lightning steps, nothing after it (no validation, no test)."""
    cfg = bench_config(
        [
            *overrides,
            "model=convnet0",
            f"model._target_={PooledLinear.__module__}.{PooledLinear.__qualname__}",
            "data.batch_size=8",
            "data.pipeline=on_device",
            f"speed.steps_per_call={steps_per_call}",
        ],
        output_dir,
    )
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = calls
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.num_sanity_val_steps = 0
        cfg.trainer.enable_model_summary = False
        cfg.test = False
    return cfg


def per_step(window: Window, steps: int) -> dict[str, float]:
    return {
        "ops_per_step": window.ops.total / steps,
        "kernels_per_step": window.ops.kernels / steps,
        "calls_per_step": window.calls.calls / steps,
    }


def fer_lab_steps(cfg: DictConfig, warmup: int, steps: int, counted: int) -> dict[str, float]:
    """Per optimizer step: Lightning steps (calls) each run `speed.steps_per_call` of them."""
    per_call = cfg.speed.steps_per_call
    pl.seed_everything(cfg.seed, verbose=False)
    clock = StepClock(warmup // per_call, steps // per_call, max(1, counted // per_call))
    job = build_job(cfg, extra_callbacks=[clock])
    job.trainer.fit(job.module, datamodule=job.datamodule)
    if len(clock.intervals) < clock.steps or clock.counted == 0:
        raise ValueError(
            f"the training split has {job.trainer.num_training_batches} batches of "
            f"{cfg.data.batch_size * per_call}, fewer than the {warmup + steps + counted} steps "
            "to time and count: use a larger dataset or fewer --host-steps / --host-warmup"
        )
    return {
        "step_ms": statistics.median(clock.intervals) * 1e3 / per_call,
        **per_step(clock.window, clock.counted * per_call),
    }


def plain_steps(cfg: DictConfig, warmup: int, steps: int, counted: int) -> dict[str, float]:
    with open_dict(cfg):
        cfg.data.steps_per_batch = 1  # the plain loop's batches are single steps' batches
    plain = PlainLoop(cfg, warmup + steps + counted + 1)
    intervals = []
    for index in range(warmup + 1):
        plain.step(index)
    for index in range(warmup + 1, warmup + steps + 1):
        started = time.perf_counter()
        plain.step(index)
        intervals.append(time.perf_counter() - started)
    with Window() as window:
        for index in range(warmup + steps + 1, warmup + steps + 1 + counted):
            plain.step(index)
    return {"step_ms": statistics.median(intervals) * 1e3, **per_step(window, counted)}


def measure_host_overhead(
    overrides: list[str],
    workdir: Path,
    steps_per_call: int = 1,
    steps: int = 1000,
    warmup: int = 48,
    counted: int = 48,
    repeats: int = 3,
) -> dict[str, Any]:
    """fer_lab's and the plain loop's per-step figures, `repeats` alternating pairs, with one
    intra-op thread (tiny ops gain nothing from more, and a busy machine's threads wait on
    each other); the overhead is the median of the pairs' step-time differences."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pairs = []
        calls = (warmup + steps + counted) // steps_per_call + 2
        for round_ in range(repeats):
            folder = workdir / "host_overhead" / f"{steps_per_call}_{round_}"
            cfg = overhead_config(overrides, folder, calls, steps_per_call)
            fer_lab = fer_lab_steps(cfg, warmup, steps, counted)
            pairs.append((fer_lab, plain_steps(cfg, warmup, steps, counted)))
    finally:
        torch.set_num_threads(threads)
    fer_lab, plain = pairs[-1]  # counts are the same in every round
    return {
        "steps_per_call": steps_per_call,
        "batch_size": 8,
        "timed_steps": steps,
        "fer_lab_step_ms": [f["step_ms"] for f, _ in pairs],
        "plain_step_ms": [p["step_ms"] for _, p in pairs],
        "overhead_ms": statistics.median(f["step_ms"] - p["step_ms"] for f, p in pairs),
        **{f"fer_lab_{k}": v for k, v in fer_lab.items() if k != "step_ms"},
        **{f"plain_{k}": v for k, v in plain.items() if k != "step_ms"},
    }
