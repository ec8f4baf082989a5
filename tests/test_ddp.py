"""DDP over 2 CPU processes (gloo), started by the CLI: one MLflow run, each epoch's metrics
once, every validation and test image counted once, rank zero's state, and a run that a
signal stopped (one rank asked, both stop) or SIGKILL ended continues as that same run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .helpers import REPO_ROOT, run_cli

pytestmark = pytest.mark.slow

EPOCHS = 3
PER_CLASS_VAL = PER_CLASS_TEST = 3  # 21 images: an odd count, which padding would make 22
DDP = [
    "model=tf_emotion_cnn",
    "dataset=synthetic",
    "dataset.train_per_class=12",
    f"dataset.val_per_class={PER_CLASS_VAL}",
    f"dataset.test_per_class={PER_CLASS_TEST}",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    f"trainer.max_epochs={EPOCHS}",
]


def send(name: str, epoch: int, node: str, marker: Path, group: bool) -> list[str]:
    """A tests.faults.SendSignal at batch 1 of `epoch`: to one rank, or to every rank."""
    args = {"epoch": epoch, "batch": 1, "marker": marker, "name": name, "group": group}
    return [f"+callbacks.{node}._target_=tests.faults.SendSignal"] + [
        f"+callbacks.{node}.{k}={v}" for k, v in args.items()
    ]


def in_own_session(tmp_path: Path, *overrides: str) -> int:
    """The CLI in a process group of its own, so a fault can SIGKILL all its ranks at once."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [sys.executable, "-m", "fer_lab.train", *overrides]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, timeout=600, start_new_session=True
    )
    return done.returncode


def test_ddp_run_stopped_then_killed_ends_as_one_finished_run(
    tmp_path: Path, mlflow_client
) -> None:
    command = [
        *DDP,
        *send("TERM", 1, "stop", tmp_path / "stopped", group=False),
        *send("KILL", 2, "kill", tmp_path / "killed", group=True),
    ]
    stopped = run_cli(tmp_path, *command)
    assert stopped.returncode == 143, stopped.stdout[-2000:] + stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stdout + stopped.stderr
    assert in_own_session(tmp_path, *command, "resume=auto") == -signal.SIGKILL
    finished = run_cli(tmp_path, *command, "resume=auto")
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]

    client = mlflow_client()
    (experiment,) = [e for e in client.search_experiments() if e.name == "synthetic"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    run_id = run.info.run_id
    for name in ("train/loss", "val/acc", "val/acc_best"):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert len(steps) == EPOCHS == len(set(steps)), (name, steps)
    assert len(client.get_metric_history(run_id, "test/acc")) == 1

    (run_dir,) = [
        p for p in (tmp_path / "logs/train/runs").iterdir() if (p / "checkpoints").is_dir()
    ]
    assert json.loads((run_dir / "run_state.json").read_text()) == {
        "status": "finished",
        "mlflow_run_id": run_id,
    }
    for split, per_class in (("val_best", PER_CLASS_VAL), ("test", PER_CLASS_TEST)):
        confusion = np.loadtxt(
            run_dir / "artifacts" / f"confusion_matrix_{split}.csv",
            delimiter=",",
            skiprows=1,
            usecols=range(1, 8),
        )
        assert confusion.sum() == 7 * per_class, split  # each image once, from both ranks
    config = (run_dir / "artifacts" / "config.yaml").read_text()
    assert "precision: 32-true" in config and "sync_batchnorm: false" in config
