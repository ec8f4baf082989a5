"""A killed, stopped or diverging run: what is left behind, and that `resume=auto` finishes it."""

import json
from pathlib import Path

import mlflow
import pytest
import torch

from .helpers import run_cli

pytestmark = pytest.mark.slow

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


def fault(kind: str, tmp_path: Path, **params: object) -> list[str]:
    """Overrides adding a tests.faults callback that fires at epoch 1, batch 3, once."""
    args = {"epoch": 1, "batch": 3, "marker": tmp_path / "fault_fired", **params}
    node = "+callbacks.fault"
    return [f"{node}._target_=tests.faults.{kind}"] + [f"{node}.{k}={v}" for k, v in args.items()]


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


@pytest.mark.parametrize(("signal_name", "exit_code"), [("KILL", -9), ("TERM", 143)])
def test_killed_run_resumes_into_the_same_mlflow_run(
    tmp_path: Path, mlflow_client, signal_name: str, exit_code: int
) -> None:
    probe = "+callbacks.status_probe"
    status_file = tmp_path / "status_while_training.txt"
    command = [
        *COMMAND,
        *fault("SendSignal", tmp_path, name=signal_name),
        # Fires only in the resumed process: the first one dies in epoch 1.
        f"{probe}._target_=tests.faults.RecordRunStatus",
        f"{probe}.epoch=2",
        f"{probe}.batch=0",
        f"{probe}.path={status_file}",
    ]
    first = run_cli(tmp_path, *command)
    assert first.returncode == exit_code, first.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 0  # epoch 1 was interrupted: the last complete epoch is kept
    client = mlflow_client()
    run = only_run(client)
    if signal_name == "TERM":
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
