"""The on-device data path, the speed settings, and `python -m fer_lab.bench` (a smoke run:
it must run and report its fields; speed itself is measured by the benchmark, not here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from fer_lab.bench.end_to_end import plain_spec
from fer_lab.core.config import loader_workers, on_gpu
from fer_lab.core.config_checks import check_values
from fer_lab.core.errors import ConfigError
from fer_lab.core.process import same_allocator_env
from fer_lab.data.faces import Faces
from fer_lab.data.on_device.batch_transform import BatchTransform
from fer_lab.training.job import supported_precision

from .helpers import REPO_ROOT, compose_config, run_train

SMALL = [
    "dataset=synthetic",
    "dataset.train_per_class=20",
    "dataset.val_per_class=5",
    "dataset.test_per_class=5",
    "data.batch_size=16",
    "data.num_workers=0",
]


def datamodule(*overrides: str):
    module = instantiate(compose_config(*SMALL, *overrides).data)
    module.setup()
    return module


def test_on_device_eval_batches_equal_the_per_sample_ones() -> None:
    """Same split, same order, same normalised pixels: only where the work is done differs."""
    for preprocess in ("scale01", "standardize", "minmax"):
        per_sample = datamodule(f"preprocess={preprocess}", "data.pipeline=per_sample")
        on_device = datamodule(f"preprocess={preprocess}", "data.pipeline=on_device")
        batches = list(on_device.val_dataloader())
        reference = list(per_sample.val_dataloader())
        assert len(batches) == len(reference) == 3  # 35 images in batches of 16
        for (x, y), (ref_x, ref_y) in zip(batches, reference, strict=True):
            assert x.dtype == torch.float32 and x.shape == ref_x.shape
            torch.testing.assert_close(x, ref_x, atol=1e-5, rtol=1e-5)
            assert torch.equal(y, ref_y)


def test_on_device_training_batches_are_shuffled_augmented_and_complete() -> None:
    module = datamodule("augmentation=strong", "data.pipeline=on_device")
    loader = module.train_dataloader()  # Lightning iterates one loader once per epoch
    first = list(loader)
    loader.current_epoch = lambda: 1  # what the trainer says in the next epoch
    second = list(loader)
    per_sample = datamodule("augmentation=strong", "data.pipeline=per_sample")
    assert len(first) == len(per_sample.train_dataloader()) == 140 // 16  # last batch dropped
    labels = torch.cat([y for _, y in first])
    assert len(labels.unique()) == 7 and len(labels) == 8 * 16
    assert not torch.equal(labels, torch.cat([y for _, y in second]))  # a new order per epoch
    assert first[0][0].shape == (16, 1, 48, 48)


def test_colour_model_gets_three_identical_channels() -> None:
    module = datamodule("data.pipeline=on_device", "data.channels=3")
    x, _ = next(iter(module.val_dataloader()))
    assert x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 2])


def auto_pipeline(monkeypatch: pytest.MonkeyPatch, device: str, *overrides: str) -> str:
    """What `data.pipeline=auto` picks when training runs on `device` (the attached trainer's
    root device, stood in for here: the decision itself needs no CUDA)."""
    module = datamodule("data.pipeline=auto", *overrides)
    monkeypatch.setattr(module, "device", lambda: torch.device(device))
    return module.resolved_pipeline()


def test_auto_pipeline_batches_small_images_with_supported_augmentation_on_any_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for augmentation in ("none", "hflip", "strong"):
        for device in ("cuda", "cpu"):
            chosen = auto_pipeline(monkeypatch, device, f"augmentation={augmentation}")
            assert chosen == "on_device", (device, augmentation)


def test_auto_pipeline_without_a_trainer_batches_on_the_cpu() -> None:
    module = datamodule("data.pipeline=auto", "augmentation=strong")
    assert module.device() == torch.device("cpu")
    assert module.resolved_pipeline() == "on_device"


def test_auto_pipeline_falls_back_for_augmentation_the_gpu_path_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blur = "augmentation.train=[{_target_:albumentations.GaussianBlur,p:0.5}]"
    module = datamodule("data.pipeline=auto", blur)
    assert [type(t).__name__ for t in module.augmentation] == ["GaussianBlur"]
    assert BatchTransform.unsupported(module.augmentation, module.preprocess, 48) is not None
    assert auto_pipeline(monkeypatch, "cuda", blur) == "per_sample"
    assert auto_pipeline(monkeypatch, "cuda", "augmentation=hflip") == "on_device"


@pytest.mark.parametrize(("side", "pipeline"), [(64, "on_device"), (65, "per_sample")])
def test_auto_pipeline_keeps_images_up_to_64_px_on_the_gpu(
    monkeypatch: pytest.MonkeyPatch, side: int, pipeline: str
) -> None:
    module = datamodule("data.pipeline=auto")
    train = module.splits.train
    module.splits.train = Faces(np.zeros((len(train), side, side), np.uint8), train.labels)
    monkeypatch.setattr(module, "device", lambda: torch.device("cuda"))
    assert module.resolved_pipeline() == pipeline


def test_auto_pipeline_reads_image_files_per_sample(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = datamodule("data.pipeline=auto")
    train = module.splits.train
    files = [tmp_path / f"{i}.png" for i in range(len(train))]  # not in memory: never read here
    module.splits.train = Faces(files, train.labels)
    monkeypatch.setattr(module, "device", lambda: torch.device("cuda"))
    assert module.resolved_pipeline() == "per_sample"


def test_explicit_pipeline_is_kept_on_any_device(monkeypatch: pytest.MonkeyPatch) -> None:
    for pipeline in ("per_sample", "on_device"):
        for device in ("cpu", "cuda"):
            module = datamodule(f"data.pipeline={pipeline}")
            monkeypatch.setattr(module, "device", lambda d=device: torch.device(d))
            assert module.resolved_pipeline() == pipeline


def test_unknown_pipeline_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.pipeline='gpu'"):
        check_values(compose_config("data.pipeline=gpu"))


def test_speed_defaults_follow_the_trainer() -> None:
    cpu = compose_config("trainer=cpu")
    assert cpu.speed.channels_last is True and cpu.data.pin_memory is False
    assert cpu.data.num_workers == loader_workers("cpu") <= 2
    gpu = compose_config("trainer=gpu")
    assert gpu.speed.channels_last is True and gpu.data.pin_memory is True
    assert gpu.trainer.precision == "bf16-mixed" and gpu.trainer.benchmark is True
    assert gpu.data.num_workers == loader_workers("gpu") >= 1
    assert on_gpu("gpu") and not on_gpu("cpu")


def test_bf16_falls_back_on_gpus_that_only_emulate_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pre-Ampere GPU: torch's default check says bf16 works (emulated), natively it does not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert supported_precision("bf16-mixed") == "16-mixed"
    assert supported_precision("32-true") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert supported_precision("bf16-mixed") == "bf16-mixed"  # Ampere and newer


@pytest.mark.slow
def test_training_on_the_device_path_with_channels_last(tmp_path: Path) -> None:
    run_train(
        tmp_path,
        *SMALL,
        "model=convnet0",
        "trainer.max_epochs=1",
        "augmentation=strong",
        "data.pipeline=on_device",
        "speed.channels_last=true",
    )
    assert list(tmp_path.glob("logs/train/runs/*/checkpoints/last.ckpt"))


def run_bench(tmp_path: Path, *args: str) -> tuple[dict, str]:
    """`python -m fer_lab.bench` on the small synthetic faces: its JSON and its printed table."""
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "fer_lab.bench", "--batch-size", "16", "--json", str(out), *args,
        *SMALL[:4],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


@pytest.mark.slow
def test_bench_runs_and_reports_every_field(tmp_path: Path) -> None:
    result, stdout = run_bench(
        tmp_path, "--models", "convnet0", "--steps", "2", "--warmup", "1", "--repeats", "1",
        "--pipeline-batches", "2", "--sweep", "2", "--sweep-model", "convnet0",
        "--sweep-epochs", "1", "--sweep-schedules=batches",
        "--end-to-end-models", "convnet0", "--end-to-end-pairs", "1", "--end-to-end-epochs", "1",
        "--host-steps-per-call", "1", "2", "--host-steps", "4", "--host-warmup", "4",
        "--host-repeats", "1",
    )  # fmt: skip
    assert result["loading"]["load_first_s"] > 0
    pipelines = {(r["pipeline"], r["augmentation"]) for r in result["pipelines"]}
    assert pipelines == {(p, a) for p in ("per_sample", "on_device") for a in ("none", "strong")}
    assert all(r["images_per_s"] > 0 for r in result["pipelines"])
    (row,) = result["training"]
    assert row["model"] == "convnet0" and row["timing"] == "lockstep"  # the default on a CPU
    assert row["fer_lab_timed_steps"] == row["plain_timed_steps"] == 2
    # One fit holds both sides at once: one joint peak.
    assert row["fer_lab_peak_memory_mb"] == row["plain_peak_memory_mb"] > 0
    assert row["ratio_plain_over_fer_lab"] == pytest.approx(
        row["plain_images_per_s"] / row["fer_lab_images_per_s"]
    )
    assert "plain/fer_lab" in stdout and "| convnet0 |" in stdout and "lockstep" in stdout
    assert [row["steps_per_call"] for row in result["host"]] == [1, 2]
    for row in result["host"]:
        assert len(row["fer_lab_step_ms"]) == len(row["plain_step_ms"]) == 1
        assert row["fer_lab_ops_per_step"] > row["plain_ops_per_step"] > 0
    assert "host work per optimizer step" in stdout and "| 2 |" in stdout
    (whole,) = result["end_to_end"]  # both processes ran to the end: they exit 0 or it raises
    assert whole["model"] == "convnet0" and whole["epochs"] == 1 and whole["pairs"] == 1
    assert whole["ratios"] == [whole["fer_lab_s"][0] / whole["plain_s"][0]]
    assert whole["fer_lab_channels_last"] is True  # the default; the plain script keeps NCHW
    assert "end to end" in stdout and "| convnet0 | NHWC | 1 | 1 |" in stdout
    # 2 at a time, 4 trials, pruning off (hydra.sweeper.pruner=null); the workers schedule:
    # test_gpu_check_dry_run_on_the_cpu.
    assert [row["schedule"] for row in result["sweep"]] == ["batches"]
    for sweep in result["sweep"]:
        assert sweep["concurrent"] == 2 and sweep["trials"] == 4
        assert sweep["trials_per_hour"] > 0


def test_end_to_end_bench_refuses_what_the_plain_script_would_not_copy(tmp_path: Path) -> None:
    spec = plain_spec(compose_config("model=tf_emotion_cnn", "optimizer.lr=0.003"), tmp_path)
    assert spec["lr"] == 0.003 and spec["model_kwargs"]["l2"] == 0.01
    with pytest.raises(ValueError, match=r"optimizer\._target_='torch\.optim\.SGD'.*augmentation"):
        plain_spec(compose_config("optimizer=sgd", "augmentation=hflip"), tmp_path)


@pytest.mark.slow
def test_bench_free_running_times_each_side_alone(tmp_path: Path) -> None:
    result, stdout = run_bench(
        tmp_path, "--timing", "free", "--sections", "training", "--models", "convnet0",
        "--steps", "3", "--warmup", "1",
    )  # fmt: skip
    (row,) = result["training"]
    assert row["timing"] == "free" and "free timing" in stdout
    assert row["fer_lab_timed_steps"] == row["plain_timed_steps"] == 2 * 3  # whole epochs
    assert row["fer_lab_images_per_s"] > 0 and row["plain_images_per_s"] > 0
    for side in ("fer_lab", "plain"):
        peak = row[f"{side}_peak_memory_mb"]
        assert isinstance(peak, float) and peak > 0


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


REUSE_BIG_BLOCKS = """
import resource, numpy as np
from fer_lab.core.process import keep_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        block = np.ones(40_000_000 // 8)  # bigger than glibc's largest mmap threshold
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
applied = keep_freed_memory()
faults()  # the first block grows the heap
print(applied, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_commands_reuse_big_freed_blocks_unless_the_user_set_the_allocator() -> None:
    applied, faults = _python(REUSE_BIG_BLOCKS).split()
    assert applied == "True" and int(faults) < 100  # mmap'd: 5,680 faults here (measured)
    assert _python(REUSE_BIG_BLOCKS, MALLOC_MMAP_MAX_="65536").split()[0] == "False"


def test_the_plain_script_gets_the_allocator_settings_of_fer_lab() -> None:
    env = same_allocator_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}
    user = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}
    assert same_allocator_env(user) == user


def test_heavy_imports_run_without_collections_and_are_frozen_after() -> None:
    code = """
import gc, weakref
from fer_lab.core.process import heavy_imports
before = [s["collections"] for s in gc.get_stats()]
with heavy_imports():
    garbage = [[object()] for _ in range(200_000)]  # would trigger young collections
    import email.mime.multipart
print([s["collections"] for s in gc.get_stats()] == before, gc.isenabled(), gc.get_freeze_count())

class Node:
    pass
def left_by_a_job():
    node = Node()
    node.itself = node  # a cycle: only the collector frees it
    return weakref.ref(node)
left = left_by_a_job()
with heavy_imports():  # the next job of a multirun
    pass
print(left() is None)
"""
    unchanged, enabled, frozen, collected = _python(code).split()
    assert unchanged == "True" and enabled == "True" and int(frozen) > 200_000
    assert collected == "True"  # not frozen for good
