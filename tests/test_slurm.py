"""Trials as SLURM jobs: `hydra/launcher=submitit_slurm` against a one-node SLURM cluster
that the test starts (tests/slurm_cluster.sh; Debian's slurm-wlm and munge)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from .helpers import REPO_ROOT, run_train
from .test_ddp import DDP
from .test_sweeps import PRUNE_AT_EPOCH_1, TINY, study, sweep_runs

# Each batch of trials as a job array on the test cluster's one partition.
ON_SLURM = [
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.cpus_per_task=1",
]


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    if shutil.which("slurmctld") is None:
        pytest.skip("SLURM is not installed (apt-get install slurm-wlm munge; .ci/run does)")
    script = Path(__file__).with_name("slurm_cluster.sh")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_sweep_trials_run_as_slurm_jobs(slurm_cluster: None, tmp_path: Path, mlflow_client) -> None:
    run_train(
        tmp_path,
        *TINY,
        "trainer.max_epochs=1",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        *ON_SLURM,
    )
    assert [t.state for t in study(tmp_path).trials] == [TrialState.COMPLETE] * 4
    # submitit keeps one folder per SLURM array task: <job id>_<task>
    folders = (tmp_path / "logs/sweeps/tiny/.submitit").iterdir()
    tasks = [folder for folder in folders if folder.is_dir() and "_" in folder.name]
    assert len(tasks) == 4
    assert all(list(task.glob("*_result.pkl")) for task in tasks)  # each ran to its end
    parents, children = sweep_runs(mlflow_client())
    (parent,) = parents
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}


@pytest.mark.slow
def test_slurm_trials_are_pruned_through_the_study(
    slurm_cluster: None, tmp_path: Path, mlflow_client
) -> None:
    """A trial running as a SLURM job reports each epoch to the study and stops when the
    pruner says so, as in-process trials do."""
    run_train(
        tmp_path,
        *TINY,
        "trainer.max_epochs=4",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        *ON_SLURM,
        *PRUNE_AT_EPOCH_1,
    )
    trials = study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(max(t.intermediate_values) == 1 for t in trials)  # stopped after epoch 1 of 0..3
    _, children = sweep_runs(mlflow_client())
    assert {c.data.tags["optuna.trial_state"] for c in children} == {"PRUNED"}


@pytest.mark.slow
def test_ddp_under_srun_is_one_run_with_each_epoch_once(
    slurm_cluster: None, tmp_path: Path, mlflow_client
) -> None:
    """Both ranks started by `srun --ntasks-per-node=2` (Lightning's SLURM environment)."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    srun = ["srun", "-N1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10"]
    command = [*srun, sys.executable, "-m", "fer_lab.train", *DDP, "trainer.max_epochs=1"]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    client = mlflow_client()
    (experiment,) = [e for e in client.search_experiments() if e.name == "synthetic"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    for name in ("train/loss", "val/acc", "test/acc"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert len(steps) == 1, (name, steps)


@pytest.mark.slow
def test_a_sweep_trial_runs_as_a_ddp_job_and_all_its_ranks_stop_when_pruned(
    slurm_cluster: None, tmp_path: Path
) -> None:
    """Each trial a 2-task SLURM job (DDP over its tasks): rank zero reports to the study, the
    pruner's answer reaches both ranks, so the trial stops at epoch 1 instead of hanging."""
    run_train(
        tmp_path,
        *TINY,
        "trainer.max_epochs=3",
        "hydra.sweeper.n_trials=1",
        *ON_SLURM,
        "hydra.launcher.tasks_per_node=2",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        *PRUNE_AT_EPOCH_1,
    )
    (trial,) = study(tmp_path).trials
    assert trial.state == TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [0, 1]
