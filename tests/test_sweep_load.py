"""Load held and faults survived: one command's WORKERS worker processes of tiny trials on one
PostgreSQL study, logging to the authenticated MLflow server (tests/auth_server.py), N_TRIALS
trials. Half of them under load alone, then faults injected mid-run: the MLflow server stopped
for OUTAGE_S and started again, PostgreSQL restarted, one worker SIGKILLed. The study ends with
exactly N_TRIALS finished trials, one parent run with N_TRIALS finished child runs, every
epoch's metrics logged once, no trial failed and nothing left RUNNING; the killed worker's
trial is failed, retried and counted once. The test prints what it measured (trials per hour,
the workers' memory, the pause each fault cost), the figures README's scale-out section
quotes. (One sweep for both: two would cost `make test` minutes it does not have.)"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from fer_lab.sweeps.heartbeats import FAILED_TRIAL_ATTR, counted_trials
from fer_lab.sweeps.storage import shared_storage

from .auth_server import AuthServer, logged_in
from .helpers import REPO_ROOT
from .test_sweeps import TINY, sweep_runs

pytestmark = pytest.mark.slow

# Eight worker processes fit this 2-core, 24 GiB machine (README: each one's memory); sixteen
# fit in memory too, but on two cores they only queue for them.
WORKERS = 8
N_TRIALS = 64
EPOCHS = 2
OUTAGE_S = 30
METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, postgres_port: int) -> Iterator[AuthServer]:
    server = AuthServer(tmp_path_factory.mktemp("load_server"), postgres_port)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sweeper_password(server: AuthServer) -> str:
    return server.add_user("sweeper", "synthetic", "EDIT")


@contextlib.contextmanager
def running_sweep(
    folder: Path, server: AuthServer, password: str, storage: str
) -> Iterator[subprocess.Popen]:
    """The sweep command, in a process group of its own (its helper workers join it), killed
    whole if the test fails before it ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(
        MLFLOW_TRACKING_URI=server.url,
        MLFLOW_TRACKING_USERNAME="sweeper",
        MLFLOW_TRACKING_PASSWORD=password,
        FER_LAB_OPTUNA_STORAGE=storage,
        PYTHONPATH=str(REPO_ROOT),
        OMP_NUM_THREADS="1",  # eight workers on two cores: no thread of theirs spins waiting
    )
    command = [
        sys.executable,
        "-m",
        "fer_lab.train",
        *TINY,
        f"trainer.max_epochs={EPOCHS}",
        f"hydra.sweeper.n_trials={N_TRIALS}",
        f"hydra.sweeper.workers={WORKERS}",
        "hydra.sweeper.heartbeat_interval=2",
        "hydra.sweeper.grace_period=20",  # longer than a PostgreSQL restart
        "logger.retry_interval_s=2",
        "logger.server_wait_s=180",
        # Artifacts through the server's proxy are tests/test_auth_server.py's; here the
        # sweep's own traffic: runs, metrics, trial states, leaderboards.
        "~callbacks.run_artifacts",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "sweep.log").open("w")
    sweep = subprocess.Popen(
        command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    try:
        yield sweep
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait(timeout=60)


def trials_of(storage: str) -> list[FrozenTrial]:
    """The study's trials; none before the sweep has created it."""
    try:
        study = optuna.load_study(study_name="tiny", storage=shared_storage(storage))
    except KeyError:
        return []
    return study.get_trials(deepcopy=False)


def completed(storage: str) -> int:
    return sum(t.state == TrialState.COMPLETE for t in trials_of(storage))


def wait_until(condition: Callable[[], bool], sweep: subprocess.Popen, log: Path) -> float:
    """Poll `condition` while the sweep runs; the time it came true."""
    deadline = time.monotonic() + 900
    while not condition():
        assert sweep.poll() is None, log.read_text()[-5000:]
        assert time.monotonic() < deadline, log.read_text()[-5000:]
        time.sleep(0.5)
    return time.monotonic()


def workers_memory_mib(sweep: subprocess.Popen) -> list[float]:
    """The resident memory of each process in the sweep's group (the command, its workers)."""
    sizes = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
            if os.getpgid(int(status.parent.name)) == sweep.pid and "VmRSS" in fields:
                sizes.append(int(fields["VmRSS"].split()[0]) / 1024)
        except (OSError, ValueError):  # the process ended meanwhile
            continue
    return sizes


def kill_a_helper_mid_trial(folder: Path, storage: str, sweep: subprocess.Popen) -> int:
    """SIGKILL a helper worker (not the command itself) while it trains a trial, known from
    the run lock in the trial's folder; the trial's number. The worker is frozen (SIGSTOP)
    while that is checked, so that it cannot finish the trial in between."""
    while True:
        for trial in trials_of(storage):
            lock = folder / f"logs/sweeps/tiny/trial_{trial.number}/run.lock"
            if trial.state != TrialState.RUNNING or not lock.is_file():
                continue
            try:
                pid = json.loads(lock.read_text())["pid"]
            except ValueError:  # being written
                continue
            if pid == sweep.pid:
                continue
            os.kill(pid, signal.SIGSTOP)
            if any(
                t.number == trial.number and t.state == TrialState.RUNNING
                for t in trials_of(storage)
            ):
                os.kill(pid, signal.SIGKILL)
                return trial.number
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)


def check_exact(storage: str, server: AuthServer, password: str, killed_trial: int) -> None:
    """N_TRIALS counted trials, all COMPLETE; the killed worker's trial failed, and every failed
    trial (also one a PostgreSQL restart may have left before it started) retried once; MLflow:
    one parent, N_TRIALS finished children, each epoch's metrics once, nothing RUNNING."""
    trials = trials_of(storage)
    assert [t.state for t in counted_trials(trials)] == [TrialState.COMPLETE] * N_TRIALS
    lost = sorted(t.number for t in trials if t.state == TrialState.FAIL)
    assert killed_trial in lost and len(trials) == N_TRIALS + len(lost)
    retried = [
        t.system_attrs[FAILED_TRIAL_ATTR] for t in trials if FAILED_TRIAL_ATTR in t.system_attrs
    ]
    assert sorted(retried) == lost
    with logged_in("sweeper", password):
        client = MlflowClient(server.url)
        parents, children = sweep_runs(client)
        (parent,) = [p for p in parents if p.data.tags["fer_lab.sweep"] == "tiny"]
        children = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["trials/complete"] == N_TRIALS
        finished = [c for c in children if c.info.status == "FINISHED"]
        assert len(finished) == N_TRIALS
        killed = {int(c.data.tags["optuna.trial"]) for c in children if c not in finished}
        assert killed_trial in killed and killed <= set(lost)  # KILLED: lost, with a run
        assert all(c.info.status == "KILLED" for c in children if c not in finished)
        numbers = sorted(int(c.data.tags["optuna.trial"]) for c in finished)
        assert numbers == sorted(t.number for t in trials if t.state == TrialState.COMPLETE)
        for child in finished:  # each epoch's value once: as many values as epochs, no step twice
            for key in METRICS:
                steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
                assert len(steps) == len(set(steps)) == EPOCHS, (child.info.run_name, key, steps)


def test_eight_workers_hold_the_load_and_pause_for_outages(
    server: AuthServer, sweeper_password: str, postgres_url: str, tmp_path: Path
) -> None:
    """The load first (trials 8 to 32: steady throughput, memory), then the faults, each once
    trials are running: the server stopped, PostgreSQL restarted, a worker killed."""
    started = time.monotonic()
    with running_sweep(tmp_path, server, sweeper_password, postgres_url) as sweep:
        log = tmp_path / "sweep.log"
        done = lambda: completed(postgres_url)  # noqa: E731
        first = wait_until(lambda: done() >= 8, sweep, log)
        steady = wait_until(lambda: done() >= 32, sweep, log)
        memory = workers_memory_mib(sweep)
        assert len(memory) == WORKERS

        server.stop()  # mid-run: trials are training and logging
        time.sleep(OUTAGE_S)
        before = done()
        server.start()
        back = time.monotonic()
        resumed = wait_until(lambda: done() > before, sweep, log)

        wait_until(lambda: done() >= 44, sweep, log)
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster(), "restart"], check=True
        )

        wait_until(lambda: done() >= 52, sweep, log)
        trial = kill_a_helper_mid_trial(tmp_path, postgres_url, sweep)
        killed = time.monotonic()
        retried = wait_until(  # failed as lost, and its retry queued, under one lock
            lambda: any(
                t.number == trial and t.state == TrialState.FAIL for t in trials_of(postgres_url)
            ),
            sweep,
            log,
        )
        assert sweep.wait(timeout=900) == 0, log.read_text()[-5000:]
    wall = time.monotonic() - started
    output = log.read_text()
    assert "Traceback" not in output and not re.search(r"Trial \d+ failed:", output)
    assert f"Trial {trial} lost its worker" in output
    check_exact(postgres_url, server, sweeper_password, killed_trial=trial)
    database_pauses = [
        float(s) for s in re.findall(r"Optuna storage answers again after (\d+) s", output)
    ]
    assert database_pauses, "no worker noticed the PostgreSQL restart"
    print(
        f"\nLOAD {WORKERS} workers, {N_TRIALS} trials of {EPOCHS} epochs, {wall:.0f} s in all: "
        f"first 8 trials done after {first - started:.0f} s, then "
        f"{24 / (steady - first) * 3600:.0f} trials/h; memory per worker (MiB): "
        f"{sorted(round(m) for m in memory)}\n"
        f"FAULTS: MLflow server down {OUTAGE_S} s, a trial finished {resumed - back:.0f} s after "
        f"it answered again; PostgreSQL restart: workers paused up to "
        f"{max(database_pauses):.0f} s; a worker SIGKILLed, its trial retried "
        f"{retried - killed:.0f} s later (grace_period 20 s)"
    )


def cluster() -> list[str]:
    """The machine's PostgreSQL cluster: version and name (tests/postgres.py started it)."""
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    return listed.stdout.split()[:2]
