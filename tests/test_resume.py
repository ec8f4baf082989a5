"""A killed, stopped or diverging run: what is left behind, and that `resume=auto` finishes it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from hydra.utils import instantiate

from fer_lab.core.errors import ConfigError
from fer_lab.training.resume import SCHEDULE_LENGTH_KEYS, ResumePoint, check_extension

from .helpers import REPO_ROOT, compose_config, fault, run_cli

EPOCHS = 3
COMMAND = [
    "dataset=synthetic",
    "dataset.train_per_class=30",
    "dataset.val_per_class=6",
    "dataset.test_per_class=6",
    "model=convnet0",
    "data.batch_size=16",
    "data.num_workers=0",
    f"trainer.max_epochs={EPOCHS}",
]


def run_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "logs" / "train" / "runs").iterdir())


def only_run(client):
    (experiment,) = [e for e in client.search_experiments() if e.name == "synthetic"]
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def assert_one_entry_per_epoch(client, run_id: str) -> None:
    for name in ("train/loss", "val/acc", "val/acc_best"):
        history = client.get_metric_history(run_id, name)
        steps = [m.step for m in history]
        assert len(history) == EPOCHS, (name, steps)
        assert steps == sorted(set(steps)), (name, steps)
    epoch_at_step = {m.step: int(m.value) for m in client.get_metric_history(run_id, "epoch")}
    val_steps = [m.step for m in client.get_metric_history(run_id, "val/acc")]
    assert [epoch_at_step[step] for step in val_steps] == list(range(EPOCHS))


@pytest.mark.slow
def test_stopped_run_resumes_into_the_same_mlflow_run(tmp_path: Path, mlflow_client) -> None:
    """SIGTERM mid-epoch. (SIGKILL mid-epoch: tests/test_ddp.py; at the points after
    training: the test below.)"""
    probe = "+callbacks.status_probe"
    status_file = tmp_path / "status_while_training.txt"
    command = [
        *COMMAND,
        *fault("SendSignal", tmp_path, name="TERM"),
        # Fires only in the resumed process: the first one dies in epoch 1.
        f"{probe}._target_=tests.faults.RecordRunStatus",
        f"{probe}.epoch=2",
        f"{probe}.batch=0",
        f"{probe}.path={status_file}",
    ]
    first = run_cli(tmp_path, *command)
    assert first.returncode == 143, first.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 0  # epoch 1 was interrupted: the last complete epoch is kept
    client = mlflow_client()
    run = only_run(client)
    assert run.info.status == "KILLED"
    assert json.loads((run_dir / "run_state.json").read_text())["status"] == "stopped"

    second = run_cli(tmp_path, *command, "resume=auto")
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = only_run(client)
    assert resumed.info.run_id == run.info.run_id
    assert status_file.read_text() == "RUNNING"  # not KILLED while it trains again
    assert resumed.info.status == "FINISHED"
    assert "test/acc" in resumed.data.metrics
    assert_one_entry_per_epoch(client, run.info.run_id)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2


@pytest.mark.slow
def test_nan_loss_fails_the_run_and_keeps_the_good_checkpoint(
    tmp_path: Path, mlflow_client
) -> None:
    result = run_cli(tmp_path, *COMMAND, *fault("PoisonWeights", tmp_path))
    assert result.returncode == 2, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "train/loss is nan at epoch 1" in output
    assert "Traceback" not in output
    run = only_run(mlflow_client())
    assert run.info.status == "FAILED"
    assert "nan at epoch 1" in run.data.tags["fer_lab.failure_reason"]
    (run_dir,) = run_dirs(tmp_path)
    for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):
        saved = torch.load(checkpoint, weights_only=False)
        assert saved["epoch"] == 0
        assert all(torch.isfinite(w).all() for w in saved["state_dict"].values())


@pytest.mark.slow
def test_seeded_cpu_runs_repeat_exactly(tmp_path: Path, mlflow_client) -> None:
    command = [*COMMAND, "trainer.max_epochs=2", "augmentation=strong", "data.num_workers=2"]
    histories = []
    for attempt in ("a", "b"):
        folder = tmp_path / attempt
        folder.mkdir()
        result = run_cli(folder, *command)
        assert result.returncode == 0, result.stderr[-3000:]
        client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        run = only_run(client)
        histories.append(
            {
                name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
                for name in run.data.metrics
            }
        )
    assert histories[0] == histories[1]
    assert len(histories[0]["train/loss"]) == 2


KILL_POINTS = ("epoch_start", "artifact_upload", "test_batch", "test_end")


def kill_at_each_point(tmp_path: Path) -> list[str]:
    """A tests.faults.KillAt per point: each launch dies at the next one."""
    overrides = []
    for point in KILL_POINTS:
        node = f"+callbacks.kill_{point}"
        overrides += [
            f"{node}._target_=tests.faults.KillAt",
            f"{node}.point={point}",
            f"{node}.epoch=2",
            f"{node}.marker={tmp_path / point}",
        ]
    return overrides


@pytest.mark.slow
def test_kill_9_at_every_point_after_training_resumes_to_an_uninterrupted_result(
    tmp_path: Path, mlflow_client
) -> None:
    """SIGKILL between two epochs, mid-artifacts after the fit, during the test, and after
    the test's metrics were logged, each followed by `resume=auto`: one FINISHED run, every
    epoch and the test once, and all artifacts."""
    command = [*COMMAND, *kill_at_each_point(tmp_path)]
    for point in KILL_POINTS:
        killed = run_cli(tmp_path, *command, "resume=auto")
        assert killed.returncode == -9, (point, killed.stderr[-3000:])
        assert (tmp_path / point).exists()  # it died where it was meant to
    finished = run_cli(tmp_path, *command, "resume=auto")
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0 and "Traceback" not in output, output[-3000:]
    client = mlflow_client()
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert_one_entry_per_epoch(client, run.info.run_id)
    assert len(client.get_metric_history(run.info.run_id, "test/acc")) == 1
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert len(epochs) == len(set(epochs))  # Lightning sends `epoch` twice a step: kept once
    uploaded = {
        a.path
        for folder in ("confusion_matrices", "figures")
        for a in client.list_artifacts(run.info.run_id, folder)
    }
    for name in (
        "confusion_matrices/confusion_matrix_val_best.png",
        "confusion_matrices/confusion_matrix_test.png",
        "figures/learning_curves.png",
        "figures/misclassified_val_best.png",
    ):
        assert name in uploaded, sorted(uploaded)
    (run_dir, *_) = run_dirs(tmp_path)
    assert json.loads((run_dir / "run_state.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_live_run_refuses_a_second_command_and_extends_after_a_kill(tmp_path: Path) -> None:
    """While a run trains, `resume=auto` from a second command exits 2 naming the process;
    once it is killed, the run continues, here with a larger trainer.max_epochs (its
    scheduler=plateau has no fixed length)."""
    stalled = tmp_path / "stalled"
    command = [*COMMAND, "scheduler=plateau"]
    stall = ["+callbacks.stall._target_=tests.faults.Stall", "+callbacks.stall.epoch=1"]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fer_lab.train",
            *command,
            *stall,
            f"+callbacks.stall.marker={stalled}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not stalled.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert stalled.exists(), "the first command never reached epoch 1"
        second = run_cli(
            tmp_path, *command, *stall, f"+callbacks.stall.marker={stalled}", "resume=auto"
        )
        output = second.stdout + second.stderr
        assert second.returncode == 2, output[-3000:]
        assert f"is being trained by process {first.pid}" in output
        assert "Traceback" not in output
    finally:
        first.kill()
        first.wait()
    longer = [
        *command,
        *stall,
        f"+callbacks.stall.marker={stalled}",
        f"trainer.max_epochs={EPOCHS + 1}",
        "resume=auto",
    ]
    resumed = run_cli(tmp_path, *longer)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run_dir, *_) = run_dirs(tmp_path)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == EPOCHS


@pytest.mark.parametrize(
    ("scheduler", "extends"),
    [("none", True), ("plateau", True), ("cosine", False), ("onecycle", False)],
)
def test_extending_max_epochs_is_checked_for_every_scheduler(
    scheduler: str, extends: bool, tmp_path: Path
) -> None:
    cfg = compose_config(f"scheduler={scheduler}", "trainer.max_epochs=3")
    planned = {}
    if cfg.scheduler.scheduler is not None:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        extra = {"total_steps": 30} if cfg.scheduler.interval == "step" else {}
        schedule = instantiate(cfg.scheduler.scheduler)(optimizer=optimizer, **extra)
        planned = {k: v for k, v in schedule.state_dict().items() if k in SCHEDULE_LENGTH_KEYS}
    point = ResumePoint(tmp_path, tmp_path / "last.ckpt", None, None, 3, planned)
    check_extension(point, 3, scheduler)  # the planned length always continues
    if extends:
        check_extension(point, 5, scheduler)
    else:
        with pytest.raises(ConfigError, match=f"scheduler={scheduler} fixed its length"):
            check_extension(point, 5, scheduler)
