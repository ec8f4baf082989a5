"""One study, several workers: processes started at the same moment against one storage
(a journal file, a fresh PostgreSQL database) add up to exactly `n_trials`, share one MLflow
parent run (killed workers: tests/test_sweep_crashes.py)."""

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import requests
from optuna.trial import TrialState

from fer_lab.sweeps.storage import open_storage

from .helpers import REPO_ROOT
from .test_sweeps import TINY, sweep_runs

pytestmark = pytest.mark.slow


def start_worker(
    tmp_path: Path, storage: str, *overrides: str, tracking_uri: str | None = None
) -> subprocess.Popen:
    """`python -m fer_lab.train -m hparams_search=optuna ...` in `tmp_path`, the storage
    given through FER_LAB_OPTUNA_STORAGE (as a password should be)."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(REPO_ROOT),
        "FER_LAB_OPTUNA_STORAGE": storage,
    }
    command = [sys.executable, "-m", "fer_lab.train", *TINY, "trainer.max_epochs=1", *overrides]
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(worker: subprocess.Popen) -> str:
    output, _ = worker.communicate(timeout=600)
    assert worker.returncode == 0, output[-5000:]
    return output


def states(storage: str) -> list[TrialState]:
    trials = optuna.load_study(study_name="tiny", storage=open_storage(storage)).trials
    return [t.state for t in sorted(trials, key=lambda t: t.number)]


# PostgreSQL workers: the other-machines test below and tests/test_sweep_crashes.py.
@pytest.mark.parametrize("backend", ["journal"])
def test_workers_started_together_share_one_study(
    tmp_path: Path, request: pytest.FixtureRequest, mlflow_client, backend: str
) -> None:
    storage = (
        str(tmp_path / "optuna.journal")
        if backend == "journal"
        else request.getfixturevalue("postgres_url")
    )
    workers = [start_worker(tmp_path, storage, "hydra.sweeper.n_trials=4") for _ in range(2)]
    outputs = [finish(worker) for worker in workers]
    assert states(storage) == [TrialState.COMPLETE] * 4
    told = [re.findall(r"Trial (\d+): val/acc_best", output) for output in outputs]
    assert sorted(int(n) for numbers in told for n in numbers) == [0, 1, 2, 3]  # each once
    parents, children = sweep_runs(mlflow_client())
    (parent,) = parents
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert (tmp_path / "logs/sweeps/tiny/best.yaml").is_file()
    if backend == "postgresql":
        password = storage.split(":")[2].split("@")[0]
        assert all(password not in output for output in outputs)
        assert parent.data.params["sweep/storage"].count("***") == 1


@pytest.fixture
def mlflow_server(tmp_path: Path, postgres_port: int) -> Iterator[str]:
    """`mlflow server` on a fresh PostgreSQL database, proxying artifacts to a folder the
    workers never touch; its http:// URL."""
    from .postgres import fresh_database

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        *("--backend-store-uri", fresh_database(postgres_port)),
        *("--artifacts-destination", (tmp_path / "server_artifacts").as_uri()),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    log = (tmp_path / "mlflow_server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            assert server.poll() is None, (tmp_path / "mlflow_server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_workers_on_other_machines_share_postgresql_and_an_mlflow_server(
    tmp_path: Path, postgres_url: str, mlflow_server: str
) -> None:
    """The multi-machine setup: the study in PostgreSQL, runs and artifacts through an MLflow
    server (no shared disk needed); each worker in its own folder, as on its own machine."""
    from mlflow import MlflowClient

    folders = [tmp_path / "machine_a", tmp_path / "machine_b"]
    workers = []
    for folder in folders:
        folder.mkdir()
        worker = start_worker(
            folder, postgres_url, "hydra.sweeper.n_trials=6", tracking_uri=mlflow_server
        )
        workers.append(worker)
    for worker in workers:
        finish(worker)
    assert states(postgres_url) == [TrialState.COMPLETE] * 6
    client = MlflowClient(mlflow_server)
    parents, children = sweep_runs(client)
    (parent,) = parents
    assert len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    downloaded = Path(
        client.download_artifacts(
            children[0].info.run_id,
            "confusion_matrices/confusion_matrix_val_best.csv",
            str(tmp_path / "fetched"),
        )
    )
    assert downloaded.read_text().startswith("true\\predicted,")
    assert children[0].info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server


def test_one_command_runs_several_workers_without_batches(tmp_path: Path) -> None:
    """`hydra.sweeper.workers=2`: the command and one more process each train one trial at a
    time and ask for the next when it ends; together exactly n_trials, overlapping."""
    worker = start_worker(
        tmp_path,
        str(tmp_path / "optuna.journal"),
        "hydra.sweeper.workers=2",
        "hydra.sweeper.n_trials=4",
        "model=nouri",  # trials of a few seconds, so start-up skew cannot hide the overlap
        "dataset.train_per_class=100",
    )
    output = finish(worker)
    trials = optuna.load_study(
        study_name="tiny", storage=open_storage(str(tmp_path / "optuna.journal"))
    ).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    told = re.findall(r"Trial (\d+): val/acc_best", output)
    assert sorted(map(int, told)) == [0, 1, 2, 3]
    first, second = sorted(trials, key=lambda t: t.datetime_start)[:2]
    assert second.datetime_start < first.datetime_complete
