"""`make gpu-check` on the CPU: its budget model, the profiler's step times, the machine-use
sampler, a step stopped at the deadline, and the whole sequence as a dry run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fer_lab.bench.device_usage import UsageSampler
from fer_lab.bench.gpu_check import (
    Costs,
    run_step,
    smallest_searched_batch,
    sweep_fixed,
    sweep_size,
    training_epochs,
)
from fer_lab.bench.profile_steps import busy_time, step_times, top_ops

from .helpers import REPO_ROOT

FER2013_SIZES = {"train": 28709, "val": 3589, "test": 3589}


def test_step_times_count_the_gpu_idle_between_kernels() -> None:
    """Two 10 ms host steps; kernels of 4 and 3 ms overlapping by 1 ms in the first, 3 ms in
    the second, and a 2 ms copy past the host's end: 11 ms busy in 22 ms."""
    step = {"ph": "X", "cat": "user_annotation"}
    kernel = {"ph": "X", "cat": "kernel", "name": "k"}
    trace = {
        "traceEvents": [
            {**step, "name": "ProfilerStep#3", "ts": 0, "dur": 10_000},
            {**step, "name": "ProfilerStep#4", "ts": 10_000, "dur": 10_000},
            {
                **step,
                "name": "ProfilerStep#3",
                "ts": 0,
                "dur": 10_000,
                "cat": "gpu_user_annotation",
            },
            {**kernel, "ts": 1_000, "dur": 4_000},
            {**kernel, "ts": 4_000, "dur": 3_000},
            {**kernel, "ts": 12_000, "dur": 3_000},
            {**kernel, "ts": 20_000, "dur": 2_000, "cat": "gpu_memcpy"},
            {"ph": "i", "name": "instant", "ts": 30_000},
        ]
    }
    times = step_times(trace)
    assert times["recorded_steps"] == 2
    assert times["host_ms_per_step"] == pytest.approx(10)
    assert times["wall_ms_per_step"] == pytest.approx(11)
    assert times["device_ms_per_step"] == pytest.approx(11 / 2)
    assert times["gpu_idle_share"] == pytest.approx(1 - 11 / 22)
    cpu_only = {"traceEvents": trace["traceEvents"][:2]}
    assert step_times(cpu_only)["gpu_idle_share"] is None
    assert busy_time([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4)
    with pytest.raises(ValueError, match="no steps"):
        step_times({"traceEvents": []})


def test_top_ops_of_a_cpu_profile_rank_by_self_time() -> None:
    x = torch.randn(256, 256)
    schedule = torch.profiler.schedule(wait=0, warmup=1, active=2, repeat=1)
    kept = {}
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU],
        schedule=schedule,
        on_trace_ready=lambda p: kept.update(ops=top_ops(p.key_averages(), 2, on_gpu=False)),
    ) as profiler:
        for _ in range(3):
            (x @ x).relu().sum()
            profiler.step()
    ops = kept["ops"]
    assert ops[0]["name"] in ("aten::mm", "aten::matmul")
    assert ops[0]["calls_per_step"] == 1
    shares = [op["share"] for op in ops]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9
    assert not any(op["name"].startswith("ProfilerStep#") for op in ops)


def test_the_budget_counts_every_commands_start_up() -> None:
    """Sized from measured costs, the training run, the four commands after it and the sweep
    fit what is left; a slower start-up leaves fewer epochs."""
    budget, left = 480.0, 400.0
    costs = Costs(fixed_s=20, setup_s=8, images_per_s=10_000, epoch_s=3.0)
    epochs = training_epochs(left, costs, FER2013_SIZES, budget)
    test_s = FER2013_SIZES["test"] / (3 * costs.images_per_s)
    planned = 4 * costs.fixed_s + 11 * test_s + epochs * costs.epoch_s * 1.1
    assert planned + max(0.25 * budget, sweep_fixed(costs)) <= left
    assert 50 < epochs < 100  # most of what is left goes to training
    slower = Costs(fixed_s=40, setup_s=8, images_per_s=10_000, epoch_s=3.0)
    assert training_epochs(left, slower, FER2013_SIZES, budget) < epochs
    assert training_epochs(10, costs, FER2013_SIZES, budget) == 1  # at least one, always


def test_the_sweep_is_sized_as_if_the_gpu_ran_its_trials_one_after_another() -> None:
    costs = Costs(fixed_s=20, setup_s=8, images_per_s=6_000, epoch_s=5.0)
    assert smallest_searched_batch() == 32
    workers = 8
    epoch_of_every_trial = (2 + 2 * workers) * costs.epoch_s * 64 / 32
    fixed = sweep_fixed(costs)
    assert sweep_size(fixed + 3.5 * epoch_of_every_trial, costs, workers, 64) == (3, None)
    assert sweep_size(fixed + 50 * epoch_of_every_trial, costs, workers, 64) == (10, None)
    assert sweep_size(fixed + 0.37 * epoch_of_every_trial, costs, workers, 64) == (1, 0.37)
    assert sweep_size(fixed + 0.01 * epoch_of_every_trial, costs, workers, 64) is None
    # At batch 32 the recipe's epoch is the trials' worst: half the time for it.
    assert sweep_size(fixed + 3.5 * epoch_of_every_trial / 2, costs, workers, 32) == (3, None)


def test_the_sampler_reads_gpus_and_processes_from_nvidia_smi(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=*) printf "40, 1000\\n80, 3000\\n" ;;\n'
        '  --query-compute-apps=*) printf "101, 700\\n102, 1300\\n103, [N/A]\\n" ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    with UsageSampler(interval_s=0.05, nvidia_smi=str(fake)) as usage:
        time.sleep(0.4)
    summary = usage.summary()
    assert summary["samples"] >= 2 and summary["gpu_sampling"] == "ok"
    assert summary["gpu_utilisation_mean"] == summary["gpu_utilisation_peak"] == 60
    assert summary["gpu_memory_peak_mib"] == 4000
    assert summary["gpu_processes"] == 2 and summary["gpu_process_memory_peak_mib"] == 1300
    assert 0 <= summary["cpu_busy_mean"] <= 1
    with UsageSampler(interval_s=0.05, nvidia_smi=None) as usage:
        time.sleep(0.2)
    assert usage.summary()["gpu_utilisation_mean"] is None
    assert usage.summary()["gpu_sampling"] == "nvidia-smi not found"


def test_a_step_running_past_the_deadline_is_stopped_and_the_next_skipped(
    tmp_path: Path,
) -> None:
    now = time.perf_counter()
    report = {
        **dict.fromkeys(("hardware", "device", "torch", "data"), "test"),
        "budget_s": 1.0,
        "steps": {},
        "started": now,
        "deadline": now + 1.0,
    }
    forever = ["timeit", "-n", "1000000000", "pass"]
    assert not run_step("forever", forever, report, tmp_path)
    step = report["steps"]["forever"]
    assert step["exit_code"] != 0 and "still running" in step["stopped"]
    assert step["seconds"] < 15
    assert not run_step("after", ["timeit", "pass"], report, tmp_path)
    assert report["steps"]["after"]["skipped"] == "the budget was spent"
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| forever |" in markdown and "still running" in markdown


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path: Path) -> None:
    """`make gpu-check`'s whole sequence with tiny settings: every step runs and reports."""
    command = [
        *(sys.executable, "-m", "fer_lab.gpu_check", "--device", "cpu", "--out", str(tmp_path)),
        *("--epochs", "1", "--batch-size", "16", "--bench-warmup", "1", "--bench-steps", "2"),
        *("--profile-warmup", "1", "--profile-steps", "2", "--budget-s", "3600"),
        *("--sweep-trials", "2", "--sweep-epochs", "1"),
        *("dataset.train_per_class=10", "dataset.val_per_class=4", "dataset.test_per_class=4"),
        *("data.num_workers=0", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["data"] == "synthetic"
    assert {name: step["exit_code"] for name, step in report["steps"].items()} == dict.fromkeys(
        ("profile", "bench", "train", "eval", "predict", "visualize", "sweep"), 0
    )
    profile = report["profile"]
    assert profile["device"] == "cpu" and profile["recorded_steps"] == 2
    assert profile["host_ms_per_step"] > 0 and profile["wall_ms_per_step"] > 0
    assert profile["device_ms_per_step"] is None and profile["gpu_idle_share"] is None
    assert profile["ranked_by"] == "self CPU time" and profile["top_ops"]
    assert profile["optimizer_steps_per_step"] >= 1
    assert 0 < profile["import_s"] < profile["startup_s"]
    assert Path(profile["trace"]).is_file()
    costs = report["budget"]["costs"]
    assert 0 < costs["setup_s"] < costs["fixed_s"] < report["steps"]["profile"]["seconds"]
    assert report["budget"]["train_epochs"] == 1
    train = report["train"]
    assert train["epochs"] == 1 and train["epochs_per_s_whole_command"] > 0
    for accuracy in ("val_acc_best", "test_acc", "eval_test_tencrop_acc"):
        assert 0 <= train[accuracy] <= 1
    (overhead,) = report["bench"]["training"]
    assert overhead["timing"] == "free" and overhead["model"] == "fer_vgg"
    assert overhead["fer_lab_timed_steps"] == overhead["plain_timed_steps"] == 2 * 2  # 2 epochs
    assert overhead["ratio_plain_over_fer_lab"] > 0
    pipelines = {(row["pipeline"], row["augmentation"]) for row in report["bench"]["pipelines"]}
    assert pipelines == {(p, a) for p in ("per_sample", "on_device") for a in ("none", "strong")}
    one, two = report["sweep"]["rows"]
    assert (one["concurrent"], one["trials"], two["concurrent"], two["trials"]) == (1, 2, 2, 4)
    assert one["trials_per_hour"] > 0 and two["trials_per_hour"] > 0
    assert report["sweep"]["speedup"] == pytest.approx(
        two["trials_per_hour"] / one["trials_per_hour"]
    )
    for row in (one, two):
        assert row["usage"]["gpu_sampling"] == "nvidia-smi not found"
        assert 0 < row["usage"]["cpu_busy_mean"] <= 1
    assert report["predict"]["photos"] == 6 and report["visualize"]["pngs"] > 1
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| sweep | 0 |" in markdown and "2 at once:" in markdown
    assert "Profile of 2 training steps" in markdown and "device n/a" in markdown
