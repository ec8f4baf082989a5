"""Several optimizer steps per Lightning step, and the step a CUDA graph captures, on the CPU:
the same weights as one step per call, and the same ops with the same arguments every step."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from fer_lab.bench.op_count import OpCounter
from fer_lab.bench.throughput import bench_config
from fer_lab.core.config_checks import check_speed
from fer_lab.core.errors import ConfigError
from fer_lab.training.job import build_job
from fer_lab.training.metrics import IMAGES, TrainingTally
from fer_lab.training.module import FERLitModule

from .helpers import compose_config

TINY = [
    "dataset=synthetic",
    "dataset.train_per_class=16",  # 112 faces: 14 steps of 8, 7 calls of 2 x 8
    "dataset.val_per_class=4",
    "dataset.test_per_class=2",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "+trainer.num_sanity_val_steps=0",
    "+trainer.enable_progress_bar=false",
    "data.batch_size=8",
    "model=convnet0",
    "logger=csv",
]


def fitted(tmp_path: Path, *overrides: str) -> tuple[FERLitModule, pl.Trainer]:
    cfg = bench_config([*TINY, *overrides], tmp_path)
    pl.seed_everything(cfg.seed)
    job = build_job(cfg)
    job.trainer.fit(job.module, datamodule=job.datamodule)
    return job.module, job.trainer


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pipeline", "schedule", "callbacks"),
    [
        ("on_device", "cosine", "default"),
        ("per_sample", "onecycle", "default"),
        ("on_device", "plateau", "default"),
        ("on_device", "cosine", "ema"),
    ],
)
def test_several_steps_per_call_train_as_one_step_per_call(
    tmp_path: Path, pipeline: str, schedule: str, callbacks: str
) -> None:
    """Each schedule at its interval: per epoch, per optimizer step, after validation; the
    weights' average updated after every optimizer step (the fitted module holds it). (The
    per-sample path runs unaugmented: its loader workers augment with streams of their own,
    so which worker draws an image's augmentation depends on the batch size.)"""
    augmentation = "strong" if pipeline == "on_device" else "none"
    setting = [f"data.pipeline={pipeline}", f"scheduler={schedule}", f"augmentation={augmentation}"]
    setting.append(f"callbacks={callbacks}")
    if schedule == "plateau":
        setting += ["scheduler.scheduler.patience=0", "scheduler.scheduler.mode=min"]
    one, one_trainer = fitted(tmp_path / "one", *setting)
    four, four_trainer = fitted(tmp_path / "four", *setting, "speed.steps_per_call=2")
    assert one_trainer.global_step == four_trainer.global_step == 2 * 14  # optimizer steps
    assert four_trainer.num_training_batches == 7
    for (name, a), b in zip(one.state_dict().items(), four.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    lrs = [t.optimizers[0].param_groups[0]["lr"] for t in (one_trainer, four_trainer)]
    assert lrs[0] == pytest.approx(lrs[1]) and lrs[0] < 1e-3 * 0.99  # the schedule moved it
    assert float(one_trainer.callback_metrics["val/loss"]) > 0.1  # a real loss, not a reset sum
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"):
        assert float(one_trainer.callback_metrics[name]) == pytest.approx(
            float(four_trainer.callback_metrics[name]), rel=1e-4
        )


def graphable_module(cuda_graphs: bool) -> tuple[FERLitModule, torch.optim.Optimizer, object]:
    cfg = compose_config("dataset=synthetic", "model=fer_vgg", "scheduler=cosine", "optimizer=sgd")
    module = FERLitModule(
        net=instantiate(cfg.model),
        loss=instantiate(cfg.loss, class_counts=[1] * 7),
        optimizer=instantiate(cfg.optimizer, momentum=0.9, nesterov=True, weight_decay=5e-4),
        scheduler=instantiate(cfg.scheduler),
        class_names=list(cfg.dataset.classes),
        channels_last=True,
        cuda_graphs=cuda_graphs,
    )
    configured = module.configure_optimizers()
    module.tally = TrainingTally(next(module.net.parameters()))
    return module, configured["optimizer"], configured["lr_scheduler"]["scheduler"]


def traced_steps(module: FERLitModule, optimizer, scheduler, steps: int = 3) -> list[list]:
    images, labels = torch.rand(4, 1, 48, 48), torch.tensor([0, 1, 2, 3])
    traces = []
    for _ in range(steps):
        with OpCounter(record=True) as counter:
            module.optimizer_step_graphable(images, labels, optimizer)
        traces.append(counter.signature)
        scheduler.step()  # the learning rate changes between the steps
    return traces


def test_the_graphed_step_runs_the_same_ops_with_the_same_arguments_every_step() -> None:
    module, optimizer, scheduler = graphable_module(cuda_graphs=True)
    traces = traced_steps(module, optimizer, scheduler)
    assert traces[1] == traces[2]
    assert any("_fused_sgd_.tensor_lr" in op[0] for op in traces[2])
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)
    assert module.tally.state[IMAGES] == 12


def test_a_python_learning_rate_would_be_frozen_into_the_graph() -> None:
    """The check above can fail: with the default optimizer the rate is a Python number."""
    module, optimizer, scheduler = graphable_module(cuda_graphs=False)
    traces = traced_steps(module, optimizer, scheduler)
    assert traces[1] != traces[2]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["trainer=cpu"], "trainer.accelerator is cpu"),
        (["trainer=gpu", "speed.compile=true"], "speed.compile"),
        (["trainer=gpu", "trainer.precision=16-mixed"], "16-mixed"),
        (["trainer=gpu", "scheduler=onecycle"], "cycle_momentum=false"),
        (["trainer=ddp"], "trainer.devices"),
    ],
)
def test_what_cuda_graphs_cannot_run_with_is_refused(overrides: list[str], named: str) -> None:
    cfg = compose_config("speed.cuda_graphs=true", *overrides)
    with pytest.raises(ConfigError, match=named):
        check_speed(cfg)
    check_speed(compose_config("speed.cuda_graphs=true", "trainer=gpu", "scheduler=cosine"))


def test_steps_per_call_refuses_clipping_and_ddp() -> None:
    cfg = compose_config("speed.steps_per_call=4", "+trainer.gradient_clip_val=1.0")
    with pytest.raises(ConfigError, match=r"trainer\.gradient_clip_val=1\.0"):
        check_speed(cfg)
    with pytest.raises(ConfigError, match=r"trainer\.strategy=ddp"):
        check_speed(compose_config("speed.steps_per_call=4", "trainer=ddp"))


@pytest.mark.slow
def test_a_mixed_run_trains_and_logs_the_data_loss(tmp_path: Path) -> None:
    module, trainer = fitted(tmp_path, "mixing=cutmix", "trainer.max_epochs=1")
    assert module.mixing is not None and trainer.global_step == 14
    assert 0 < float(trainer.callback_metrics["train/loss"]) < 10
