"""`python -m fer_lab.bench.profile_steps`: a few training steps of a config under torch.profiler,
in a process of its own as `python -m fer_lab.train` runs, for `make gpu-check`.

    python -m fer_lab.bench.profile_steps experiment=fer_lab_best trainer=gpu \\
        --device cuda --warmup 10 --steps 10 --json profile.json --trace trace.json

The job is the training command's own (fer_lab.training.job.build_job: its data path, module,
callbacks and logger); one epoch of 1 + warmup + steps batches, no validation. The first batch
(the epoch's start, where the on-device path augments the epoch) and the warm-up steps (cuDNN's
autotuning, graph capture) are not recorded. Reported: the top ops by self device time (self
CPU time on a CPU), host and device time per step, and the share of each step the GPU idles;
and when the process reached its first training batch, the fixed start-up every fer_lab
command pays. The Chrome trace (--trace) opens in Perfetto or chrome://tracing.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

GPU_ACTIVITY = ("kernel", "gpu_memcpy", "gpu_memset")
STEP_ANNOTATION = "ProfilerStep#"
TOP_OPS = 15


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fer_lab.bench.profile_steps")
    parser.add_argument("overrides", nargs="*", help="training overrides, as for fer_lab.train")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--warmup", type=int, default=10, help="steps run but not recorded")
    parser.add_argument("--steps", type=int, default=10, help="steps recorded")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--trace", type=Path, default=None, help="Chrome trace of the steps")
    parser.add_argument(
        "--launched-at",
        type=float,
        default=None,
        help="time.time() when the caller started this process (default: when main starts)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    return args


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: the time something ran."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def step_times(trace: dict[str, Any]) -> dict[str, Any]:
    """Host and device time per recorded step from a Chrome trace (microseconds in, ms out).
    A step's wall time runs from the first recorded step's start to the end of the last host
    step or of the last GPU work it queued, whichever is later; the GPU idles for the part of
    it that no kernel, copy or memset covers."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    steps = [
        e
        for e in events
        if e["name"].startswith(STEP_ANNOTATION) and e.get("cat") != "gpu_user_annotation"
    ]
    if not steps:
        raise ValueError("the profiler recorded no steps")
    start = min(e["ts"] for e in steps)
    host_end = max(e["ts"] + e["dur"] for e in steps)
    gpu = [
        (max(e["ts"], start), e["ts"] + e["dur"]) for e in events if e.get("cat") in GPU_ACTIVITY
    ]
    gpu = [(a, b) for a, b in gpu if b > a]
    end = max([host_end, *(b for _, b in gpu)])
    n = len(steps)
    result = {
        "recorded_steps": n,
        "host_ms_per_step": statistics.mean(e["dur"] for e in steps) / 1000,
        "wall_ms_per_step": (end - start) / n / 1000,
        "device_ms_per_step": None,
        "gpu_idle_share": None,
    }
    if gpu:
        busy = busy_time(gpu)
        result["device_ms_per_step"] = busy / n / 1000
        result["gpu_idle_share"] = 1 - busy / (end - start)
    return result


def top_ops(averages: Any, steps: int, on_gpu: bool) -> list[dict[str, Any]]:
    """The host ops (aten::*, fer_lab's and Lightning's annotations) with the most self time on
    the device (the kernels each launched) or, on a CPU, on the host."""
    from torch.autograd import DeviceType

    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    ops = [
        a
        for a in averages
        if a.device_type == DeviceType.CPU and not a.key.startswith(STEP_ANNOTATION)
    ]
    total = sum(getattr(a, key) for a in ops) or 1.0
    ranked = sorted(ops, key=lambda a: getattr(a, key), reverse=True)[:TOP_OPS]
    return [
        {
            "name": a.key,
            "calls_per_step": a.count / steps,
            "self_ms_per_step": getattr(a, key) / steps / 1000,
            "share": getattr(a, key) / total,
        }
        for a in ranked
        if getattr(a, key) > 0
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    launched = args.launched_at or time.time()
    from fer_lab.core.process import heavy_imports, keep_freed_memory

    keep_freed_memory()  # as every fer_lab command does
    with heavy_imports():
        import pytorch_lightning as pl
        import torch
        from omegaconf import open_dict

        from fer_lab.bench.throughput import bench_config, device_of, one_epoch
        from fer_lab.training.job import build_job
    imported = time.time()

    class StepProfiler(pl.Callback):
        """Steps torch.profiler at each batch end; notes the first batch and optimizer steps."""

        def __init__(self, profiler: torch.profiler.profile) -> None:
            self.profiler, self.calls = profiler, 0
            self.first_batch = self.ended = 0.0
            self.global_steps: list[int] = []

        def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.profiler.start()

        def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
            if batch_idx == 0:
                self.first_batch = time.time()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
            self.profiler.step()
            self.calls += 1
            if self.calls in (1 + args.warmup, 1 + args.warmup + args.steps):
                self.global_steps.append(trainer.global_step)

        def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.profiler.stop()
            self.ended = time.time()

    with tempfile.TemporaryDirectory(prefix="fer_lab_profile_") as temp:
        cfg = bench_config(args.overrides, Path(temp))
        one_epoch(cfg, 1 + args.warmup, args.steps)
        with open_dict(cfg):
            cfg.experiment_tag = "gpu_check_profile"  # not taken for the recipe's own runs
        on_gpu = device_of(cfg).type == "cuda"
        activities = [torch.profiler.ProfilerActivity.CPU]
        if on_gpu:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        recorded: dict[str, Any] = {}

        def keep(profiler: torch.profiler.profile) -> None:
            trace = args.trace or Path(temp) / "trace.json"
            profiler.export_chrome_trace(str(trace))
            recorded["times"] = step_times(json.loads(trace.read_text()))
            recorded["top_ops"] = top_ops(profiler.key_averages(), args.steps, on_gpu)

        schedule = torch.profiler.schedule(wait=1, warmup=args.warmup, active=args.steps, repeat=1)
        profiler = torch.profiler.profile(
            activities=activities, schedule=schedule, on_trace_ready=keep
        )
        clock = StepProfiler(profiler)
        pl.seed_everything(cfg.seed)
        job = build_job(cfg, extra_callbacks=[clock])
        job.trainer.fit(job.module, datamodule=job.datamodule)
    if "times" not in recorded:
        raise SystemExit(
            f"The epoch ended before {1 + args.warmup + args.steps} batches "
            "(--warmup, --steps): a smaller one, or a bigger split"
        )
    first, last = clock.global_steps
    result = {
        "device": "cuda" if on_gpu else "cpu",
        "batch_size": cfg.data.batch_size,
        "warmup": args.warmup,
        "steps": args.steps,
        **recorded["times"],
        "optimizer_steps_per_step": (last - first) / args.steps,
        "ranked_by": "self device time" if on_gpu else "self CPU time",
        "top_ops": recorded["top_ops"],
        "import_s": imported - launched,
        "startup_s": clock.first_batch - launched,
        "loop_s": clock.ended - clock.first_batch,
        "peak_device_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
        "trace": str(args.trace) if args.trace else None,
    }
    if not on_gpu:
        result["note"] = "on a CPU the host runs the ops itself: device time and idle share n/a"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
