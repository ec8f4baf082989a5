"""The scale-out tracking server with MLflow's own authentication (tests/auth_server.py): no
login and a wrong password are refused, before any training; a read-only user cannot write; a
two-worker sweep logs through it as a user with EDIT on its experiment, artifacts proxied, and no
password lands in any file, output line or MLflow field."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fer_lab.core.errors import TrackingError
from fer_lab.tracking.mlflow_store import check_credentials

from .auth_server import AuthServer, logged_in
from .helpers import REPO_ROOT
from .postgres import PASSWORD as POSTGRES_PASSWORD
from .test_sweeps import TINY, sweep_runs

# All slow: the fast checks share the module's server, whose start takes seconds.
pytestmark = pytest.mark.slow

EXPERIMENT = "synthetic"  # dataset=synthetic logs there
LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, postgres_port: int) -> Iterator[AuthServer]:
    server = AuthServer(tmp_path_factory.mktemp("auth_server"), postgres_port)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def passwords(server: AuthServer) -> dict[str, str]:
    """A worker user with EDIT on the experiment and a read-only one, by name."""
    return {
        "sweeper": server.add_user("sweeper", EXPERIMENT, "EDIT"),
        "viewer": server.add_user("viewer", EXPERIMENT, "READ"),
    }


@pytest.fixture
def no_login(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LOGIN:
        monkeypatch.delenv(name, raising=False)


def test_no_login_and_a_wrong_password_are_refused(
    server: AuthServer, passwords: dict[str, str], no_login: None
) -> None:
    search = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=30).status_code == 401
    assert requests.get(search, auth=("sweeper", "wrong-password-1"), timeout=30).status_code == 401
    with pytest.raises(TrackingError) as none_given:
        check_credentials(server.url)
    with logged_in("sweeper", "wrong-password-1"), pytest.raises(TrackingError) as wrong:
        check_credentials(server.url)
    for refused in (none_given, wrong):
        assert all(name in str(refused.value) for name in LOGIN)
    assert "none was given" in str(none_given.value)
    assert "refused the login of user 'sweeper'" in str(wrong.value)
    with logged_in("sweeper", passwords["sweeper"]):
        check_credentials(server.url)  # accepted


def test_a_read_only_user_cannot_log_a_metric_or_upload_an_artifact(
    server: AuthServer, passwords: dict[str, str], tmp_path: Path
) -> None:
    artifact = tmp_path / "notes.txt"
    artifact.write_text("written by the sweeper\n")
    with logged_in("sweeper", passwords["sweeper"]):
        writer = MlflowClient(server.url)
        experiment_id = writer.get_experiment_by_name(EXPERIMENT).experiment_id
        run_id = writer.create_run(experiment_id).info.run_id
        writer.log_metric(run_id, "loss", 1.0)
        writer.log_artifact(run_id, str(artifact))
    with logged_in("viewer", passwords["viewer"]):
        reader = MlflowClient(server.url)
        assert reader.get_run(run_id).data.metrics == {"loss": 1.0}
        with pytest.raises(MlflowException) as metric:
            reader.log_metric(run_id, "loss", 0.5)
        assert metric.value.error_code == "PERMISSION_DENIED"
        with pytest.raises(requests.HTTPError) as upload:
            reader.log_artifact(run_id, str(artifact), "again")
        assert upload.value.response.status_code == 403
        with pytest.raises(MlflowException) as run:
            reader.create_run(experiment_id)
        assert run.value.error_code == "PERMISSION_DENIED"
        assert [m.value for m in reader.get_metric_history(run_id, "loss")] == [1.0]


def train(
    folder: Path, url: str, login: dict[str, str], *overrides: str
) -> subprocess.CompletedProcess:
    """`python -m fer_lab.train` in `folder`, logging to `url` with `login` (MLFLOW_TRACKING_*)."""
    env = {k: v for k, v in os.environ.items() if k not in LOGIN}
    env.update(login, MLFLOW_TRACKING_URI=url, PYTHONPATH=str(REPO_ROOT))
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "fer_lab.train", *overrides]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_train_without_a_valid_login_stops_before_training_with_exit_2(
    server: AuthServer, passwords: dict[str, str], tmp_path: Path
) -> None:
    run = ["dataset=synthetic", "model=convnet0", "trainer.max_epochs=1", "hydra.run.dir=run"]
    wrong = {"MLFLOW_TRACKING_USERNAME": "sweeper", "MLFLOW_TRACKING_PASSWORD": "not-it-123456"}
    cases = [
        ("none", {}, run, "none was given"),
        ("wrong", wrong, run, "refused the login of user 'sweeper'"),
        ("sweep", {}, [*TINY, "hydra.sweeper.n_trials=1"], "none was given"),
    ]
    for name, login, overrides, problem in cases:
        result = train(tmp_path / name, server.url, login, *overrides)
        output = result.stdout + result.stderr
        assert result.returncode == 2, output[-3000:]
        assert problem in output and all(variable in output for variable in LOGIN)
        assert "Traceback" not in output
        assert not list((tmp_path / name).rglob("*.ckpt"))  # stopped before training
        assert "not-it-123456" not in output


def test_a_two_worker_sweep_logs_through_the_server_and_writes_no_password(
    server: AuthServer, passwords: dict[str, str], tmp_path: Path, postgres_url: str
) -> None:
    login = {
        "MLFLOW_TRACKING_USERNAME": "sweeper",
        "MLFLOW_TRACKING_PASSWORD": passwords["sweeper"],
    }
    login["FER_LAB_OPTUNA_STORAGE"] = postgres_url
    result = train(
        tmp_path / "worker",
        server.url,
        login,
        *TINY,
        "trainer.max_epochs=1",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.workers=2",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]

    with logged_in("viewer", passwords["viewer"]):
        client = MlflowClient(server.url)
        parents, children = sweep_runs(client)
        (parent,) = [p for p in parents if p.data.tags["fer_lab.sweep"] == "tiny"]
        assert len(children) == 4
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
        assert all(c.info.status == "FINISHED" for c in [parent, *children])
        assert all(c.info.artifact_uri.startswith("mlflow-artifacts:") for c in children)
        csv = client.download_artifacts(
            children[0].info.run_id,
            "confusion_matrices/confusion_matrix_val_best.csv",
            str(tmp_path / "fetched"),
        )
        assert Path(csv).read_text().startswith("true\\predicted,")
        experiment = client.get_experiment_by_name(EXPERIMENT)
        fields = [str(experiment.tags)]
        for run in client.search_runs([experiment.experiment_id]):
            fields += [str(run.data.params), str(run.data.tags), run.info.run_name or ""]
    assert list((server.folder / "artifacts").rglob("confusion_matrix_val_best.csv"))

    secrets = [*passwords.values(), server.admin_password, POSTGRES_PASSWORD]
    for secret in secrets:
        assert secret not in output
        assert all(secret not in field for field in fields)
    # The workers' files, and the server's (its config, log and artifact store) alike.
    files = [p for folder in (tmp_path, server.folder) for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.name == "best.yaml" for p in files)
    leaks = [str(p) for p in files for secret in secrets if secret.encode() in p.read_bytes()]
    assert leaks == [], f"passwords in {leaks}"
