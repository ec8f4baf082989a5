"""A sweep killed whole (SIGKILL of its process group mid-trial: a power cut, an OOM kill, a
pre-empted node), then the same command run again. On a journal file, SQLite and PostgreSQL,
with one worker and with three: the study ends with exactly `n_trials` finished trials, none
RUNNING; each dead trial is retried once with its parameters and counted once; no MLflow run
is left RUNNING, there is one parent run, and the dead trials' runs are KILLED with the reason,
shown in the parent's leaderboard."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from fer_lab.sweeps.heartbeats import FAILED_TRIAL_ATTR, counted_trials
from fer_lab.sweeps.storage import open_storage

from .helpers import REPO_ROOT
from .test_sweeps import TINY, sweep_runs

pytestmark = pytest.mark.slow

GRACE_S = 4


def sweep_command(tmp_path: Path, workers: int, n_trials: int) -> list[str]:
    """The sweep; trials numbered `workers` and above hang at epoch 1 until released."""
    fault = "+callbacks.fault"
    return [
        sys.executable,
        "-m",
        "fer_lab.train",
        *TINY,
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.workers={workers}",
        "hydra.sweeper.heartbeat_interval=1",
        f"hydra.sweeper.grace_period={GRACE_S}",
        "~callbacks.run_artifacts",  # seconds per trial: the crash is what is tested here
        f"{fault}._target_=tests.faults.HangFromTrial",
        fault + ".trial=${sweep.trial_number}",
        f"{fault}.from_trial={workers}",
        f"{fault}.epoch=1",
        f"{fault}.folder={tmp_path / 'hung'}",
        f"{fault}.release={tmp_path / 'released'}",
    ]


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="tiny", storage=open_storage(storage))
    return sorted(study.trials, key=lambda t: t.number)


@pytest.mark.parametrize(("backend", "workers"), [("journal", 1), ("sqlite", 1), ("journal", 3)])
def test_a_sweep_killed_whole_on_a_file_reaches_n_trials_when_run_again(
    tmp_path: Path, mlflow_client, backend: str, workers: int
) -> None:
    files = {"journal": str(tmp_path / "optuna.journal"), "sqlite": f"sqlite:///{tmp_path}/o.db"}
    kill_and_run_again(tmp_path, files[backend], workers, mlflow_client())


@pytest.mark.parametrize("workers", [1, 3])
def test_a_sweep_killed_whole_on_postgresql_reaches_n_trials_when_run_again(
    tmp_path: Path, postgres_url: str, mlflow_client, workers: int
) -> None:
    kill_and_run_again(tmp_path, postgres_url, workers, mlflow_client())


def kill_and_run_again(tmp_path: Path, storage: str, workers: int, client: MlflowClient) -> None:
    """The sweep on `storage`, killed whole once every worker is mid-trial, then run again."""
    n_trials = 2 * workers  # `workers` trials finish, then every worker dies mid-trial
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(REPO_ROOT),
        "FER_LAB_OPTUNA_STORAGE": storage,
    }
    command = sweep_command(tmp_path, workers, n_trials)
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a node's processes are
        )
        deadline = time.monotonic() + 300
        while len(list((tmp_path / "hung").glob("hung_*"))) < workers:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "the workers never all hung mid-trial"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    (tmp_path / "released").write_text("")
    assert "lost its worker" not in (tmp_path / "first.log").read_text()  # none live was failed
    states = [t.state for t in trials_of(storage)]
    assert states.count(TrialState.COMPLETE) == workers
    assert states.count(TrialState.RUNNING) == workers

    second = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-5000:]

    trials = trials_of(storage)
    lost = [t for t in trials if t.state == TrialState.FAIL]
    retries = [t for t in trials if FAILED_TRIAL_ATTR in t.system_attrs]
    assert [t.state for t in counted_trials(trials)] == [TrialState.COMPLETE] * n_trials
    assert len(trials) == n_trials + workers  # nothing RUNNING or WAITING either
    assert sorted(t.system_attrs[FAILED_TRIAL_ATTR] for t in retries) == [t.number for t in lost]
    by_number = {t.number: t for t in trials}
    for retry in retries:
        assert retry.params == by_number[retry.system_attrs[FAILED_TRIAL_ATTR]].params
        assert retry.state == TrialState.COMPLETE
    assert output.count("lost its worker") == workers

    parents, children = sweep_runs(client)
    (parent,) = parents
    assert {run.info.status for run in [*parents, *children]} <= {"FINISHED", "KILLED"}
    assert parent.info.status == "FINISHED"
    killed = [c for c in children if c.info.status == "KILLED"]
    assert sorted(int(c.data.tags["optuna.trial"]) for c in killed) == [t.number for t in lost]
    for run in killed:
        assert "its worker died" in run.data.tags["fer_lab.failure_reason"]
        assert "retried as trial" in run.data.tags["fer_lab.failure_reason"]
    assert sum(c.info.status == "FINISHED" for c in children) == n_trials
    assert parent.data.metrics["trials/complete"] == n_trials
    assert parent.data.metrics["trials/retried"] == workers
    folder = client.download_artifacts(parent.info.run_id, "leaderboard", str(tmp_path))
    table = pd.read_csv(Path(folder) / "leaderboard.csv")
    assert sorted(table["status"]) == ["COMPLETE"] * n_trials + ["KILLED"] * workers
    assert table[table["status"] == "KILLED"]["note"].str.contains("its worker died").all()
