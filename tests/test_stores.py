"""Tracking stores under faults: an unreachable server, a server dropping mid-run, and several
processes writing one SQLite file. No network: servers are local sockets or patched clients.

The spawned writer processes import this module, so its top-level imports stay light (no
torch/Lightning); the tests that need the logger import it themselves.
"""

import contextlib
import http.server
import json
import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import optuna
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

from fer_lab.core.errors import TrackingError
from fer_lab.sweeps.storage import open_storage
from fer_lab.tracking.mlflow_store import (
    is_connectivity_error,
    prepare_tracking_store,
    probe_server,
)
from fer_lab.tracking.sqlite_files import sqlite_path

WRITERS = 4


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def journal_mode(url: str) -> str:
    with contextlib.closing(sqlite3.connect(sqlite_path(url))) as connection:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]


# --- A. an unreachable server at start ------------------------------------------------------


def test_unreachable_server_fails_fast_naming_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from fer_lab.tracking.mlflow_logger import FERMLflowLogger

    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # set by the user: kept
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")  # unset: capped
    with pytest.raises(TrackingError) as raised:
        FERMLflowLogger(experiment_name="unreachable")
    message = str(raised.value)
    assert url in message and "connection refused" in message
    assert "make ui" in message and "MLFLOW_TRACKING_URI" in message and "logger=csv" in message
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status", [200, 503])
def test_probe_accepts_a_healthy_server_and_names_http_errors(status: int) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    with http.server.HTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            if status == 200:
                probe_server(url)
            else:
                with pytest.raises(TrackingError, match="HTTP 503 on /health"):
                    probe_server(url)
        finally:
            server.shutdown()


@pytest.mark.slow
def test_cli_exits_with_2_within_seconds_when_the_server_is_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    command = [sys.executable, "-m", "fer_lab.train", "dataset=synthetic", "model=convnet0"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    start = time.monotonic()
    result = subprocess.run(
        [*command, "trainer.max_epochs=1"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert f"MLflow tracking server {url} is not reachable" in output
    assert "Traceback" not in output
    assert elapsed < 15, f"took {elapsed:.1f} s"


# --- C. several processes on one SQLite file ------------------------------------------------


def _mlflow_writer(uri: str, index: int, barrier, results) -> None:
    try:
        barrier.wait(timeout=120)  # all four race for the fresh file at once
        prepare_tracking_store(uri)
        client = MlflowClient(uri)
        run_id = client.create_run("0", run_name=f"writer {index}").info.run_id
        for i in range(50):
            client.log_metric(run_id, "loss", float(i), step=i)
            client.log_param(run_id, f"p{i}", i)
            client.set_tag(run_id, f"t{i}", index)
        client.set_terminated(run_id)
        results.put((index, "ok"))
    except Exception:
        results.put((index, traceback.format_exc()))


def _optuna_writer(url: str, index: int, barrier, results) -> None:
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        barrier.wait(timeout=120)
        storage = open_storage(url)
        study = optuna.create_study(study_name="race", storage=storage, load_if_exists=True)
        for _ in range(10):
            trial = study.ask()
            study.tell(trial, trial.suggest_float("x", 0, 1))
        results.put((index, "ok"))
    except Exception:
        results.put((index, traceback.format_exc()))


def run_writers(target, url: str) -> None:
    """`target` in WRITERS spawned processes at once; fails with the first worker traceback."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(WRITERS), context.Queue()
    workers = [
        context.Process(target=target, args=(url, i, barrier, results)) for i in range(WRITERS)
    ]
    for worker in workers:
        worker.start()
    outcomes = dict(results.get(timeout=300) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert all(o == "ok" for o in outcomes.values()), "\n".join(outcomes.values())


def test_concurrent_mlflow_writers_on_a_fresh_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_writers(_mlflow_writer, uri)
    client = MlflowClient(uri)
    runs = client.search_runs(["0"])
    assert sorted(r.info.run_name for r in runs) == [f"writer {i}" for i in range(WRITERS)]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(i, float(i)) for i in range(50)]
        assert len(run.data.params) == 50
        assert len([k for k in run.data.tags if k.startswith("t")]) == 50
        assert run.info.status == "FINISHED"
    assert journal_mode(uri) == "wal"


def test_concurrent_optuna_trials_on_a_fresh_sqlite_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    run_writers(_optuna_writer, url)
    trials = optuna.load_study(study_name="race", storage=open_storage(url)).trials
    assert sorted(t.number for t in trials) == list(range(WRITERS * 10))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert journal_mode(url) == "wal"


def test_open_storage_by_kind(tmp_path: Path) -> None:
    from optuna.storages import JournalStorage, RDBStorage

    sqlite = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=5)
    assert isinstance(sqlite, RDBStorage) and sqlite.get_heartbeat_interval() == 5
    assert isinstance(open_storage(str(tmp_path / "optuna.journal")), JournalStorage)


# --- B. a server dropping mid-run -----------------------------------------------------------


def _response(status: int) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    return response


@pytest.mark.parametrize(
    ("error", "connectivity"),
    [
        (requests.ConnectionError("[Errno 111] Connection refused"), True),
        (requests.ReadTimeout("read timed out"), True),
        (MlflowException("API request failed with exception ..."), True),  # MLflow's wrapping
        (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "503"}), True),
        (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "p"}), False),
        (requests.HTTPError(response=_response(502)), True),  # an artifact upload
        (requests.HTTPError(response=_response(404)), False),
        (ValueError("bad value"), False),
    ],
)
def test_connectivity_errors_are_told_from_real_ones(error: Exception, connectivity: bool) -> None:
    assert is_connectivity_error(error) is connectivity


class Outage:
    """Makes the client's deliveries fail the way MLflow's REST client does while the server is
    down (a refused connection wrapped in an MlflowException); counts the attempts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = False
        self.attempts = 0
        for name in ("log_batch", "log_artifact", "set_terminated", "update_run"):
            monkeypatch.setattr(MlflowClient, name, self._guard(getattr(MlflowClient, name)))

    def _guard(self, deliver):
        def guarded(client: MlflowClient, *args, **kwargs):
            self.attempts += 1
            if not self.down:
                return deliver(client, *args, **kwargs)
            try:
                raise requests.ConnectionError("[Errno 111] Connection refused")
            except requests.ConnectionError as error:
                raise MlflowException(f"API request failed with exception {error}") from error

        return guarded


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated SQLite store for the logger tests (creating one takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    prepare_tracking_store(uri)
    return uri


@pytest.fixture
def make_logger(store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A buffering logger with its own experiment; PL's global tracking URI is restored."""
    from fer_lab.tracking.mlflow_logger import FERMLflowLogger

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)

    def make(retry_interval_s: float = 0.0) -> FERMLflowLogger:
        return FERMLflowLogger(
            experiment_name=tmp_path.name,
            tracking_uri=store_uri,
            artifact_location=str(tmp_path / "artifacts"),
            undelivered_path=tmp_path / "out" / "mlflow_undelivered.jsonl",
            retry_interval_s=retry_interval_s,
        )

    return make


def buffered(logger) -> list[dict]:
    return [json.loads(line) for line in logger.undelivered_path.read_text().splitlines()]


def test_a_short_outage_loses_nothing_and_keeps_order(
    make_logger,
    store_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage(monkeypatch)
    logger = make_logger()
    logger.log_hyperparams({"lr": 0.1})
    artifact = tmp_path / "confusion.csv"
    artifact.write_text("a,b\n")

    outage.down = True
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    logger.set_tags({"phase": "outage"})
    logger.upload_artifact(artifact, "confusion_matrices")
    assert [item["kind"] for item in buffered(logger)] == ["batch"] * 4 + ["artifact"]
    assert "unreachable" in caplog.text

    outage.down = False
    logger.log_metrics({"loss": 0.1}, step=3)
    assert not logger.undelivered_path.exists()
    client, run_id = MlflowClient(store_uri), logger.run_id
    history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.timestamp)
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.1)]
    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.1"} and run.data.tags["phase"] == "outage"
    assert [a.path for a in client.list_artifacts(run_id, "confusion_matrices")] == [
        "confusion_matrices/confusion.csv"
    ]
    logger.finalize("success")
    assert client.get_run(run_id).info.status == "FINISHED"


def test_retries_are_spaced_out_and_finalize_sends_the_rest(
    make_logger, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outage = Outage(monkeypatch)
    logger = make_logger(retry_interval_s=3600)
    logger.log_metrics({"loss": 1.0}, step=0)
    outage.down = True
    outage.attempts = 0
    for step in range(1, 5):
        logger.log_metrics({"loss": 1.0}, step=step)
    assert outage.attempts == 1  # one failed call; the next ones wait for the retry interval
    outage.down = False
    logger.finalize("success")
    client = MlflowClient(store_uri)
    assert len(client.get_metric_history(logger.run_id, "loss")) == 5
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert not logger.undelivered_path.exists()


def test_a_persistent_outage_leaves_the_items_in_the_file_and_warns(
    make_logger, store_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    outage = Outage(monkeypatch)
    logger = make_logger()
    logger.log_hyperparams({"lr": 0.1})
    outage.down = True
    for step in range(3):
        logger.log_metrics({"loss": 1.0}, step=step)
    logger.set_status("KILLED", reason="pruned after epoch 2")
    logger.finalize("success")  # PL's teardown after set_status: the status stays KILLED
    items = buffered(logger)
    assert [item.get("status") for item in items[-2:]] == ["KILLED", "KILLED"]
    assert ["fer_lab.failure_reason", "pruned after epoch 2"] in items[3]["tags"]
    assert "6 MLflow deliveries" in caplog.text and str(logger.undelivered_path) in caplog.text
    client = MlflowClient(store_uri)
    assert client.get_run(logger.run_id).info.status == "RUNNING"


def test_an_item_the_server_rejects_later_is_reported_in_a_run_tag(
    make_logger,
    store_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage(monkeypatch)
    logger = make_logger()
    logger.log_metrics({"loss": 1.0}, step=0)
    artifact = tmp_path / "gone.csv"
    artifact.write_text("a\n")
    outage.down = True
    logger.upload_artifact(artifact, "files")
    artifact.unlink()  # the file is gone before the server is back
    outage.down = False
    logger.finalize("success")
    client = MlflowClient(store_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["fer_lab.undelivered"].startswith("1 items not delivered, kept in ")
    assert [item["kind"] for item in buffered(logger)] == ["artifact"]
    assert "rejected a buffered delivery" in caplog.text


def test_real_errors_still_raise(make_logger) -> None:
    logger = make_logger()
    logger.log_hyperparams({"lr": 0.1})
    with pytest.raises(MlflowException, match="lr"):
        logger.log_hyperparams({"lr": 0.2})  # MLflow refuses to change a logged param
    assert not logger.undelivered_path.exists()


def test_parallel_trials_creating_the_experiment_share_it(
    make_logger, store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = make_logger()
    client = MlflowClient(store_uri)
    created = client.create_experiment(tmp_path.name, str(tmp_path / "artifacts"))
    lookup = MlflowClient.get_experiment_by_name
    calls = []

    def first_lookup_misses(self, name):  # another process creates it right after our lookup
        calls.append(name)
        return None if len(calls) == 1 else lookup(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", first_lookup_misses)
    assert logger.experiment_id == created


def test_set_status_outlasts_finalize_and_running_reopens(make_logger, store_uri: str) -> None:
    logger = make_logger()
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.set_status("KILLED", reason="pruned after epoch 0")
    logger.finalize("success")
    client = MlflowClient(store_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["fer_lab.failure_reason"] == "pruned after epoch 0"
    logger.set_status("RUNNING")  # a resumed run
    assert client.get_run(logger.run_id).info.status == "RUNNING"
    logger.finalize("success")
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    with pytest.raises(Exception, match="run status"):
        logger.set_status("DONE")


def test_a_resumed_logger_sends_what_the_killed_process_left_first(
    make_logger, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outage = Outage(monkeypatch)
    killed = make_logger()
    killed.log_metrics({"loss": 1.0}, step=0)
    outage.down = True
    killed.log_metrics({"loss": 0.5}, step=1)  # the process dies with this in the file
    outage.down = False
    from fer_lab.tracking.mlflow_logger import FERMLflowLogger

    resumed = FERMLflowLogger(
        experiment_name=killed._experiment_name,
        tracking_uri=store_uri,
        run_id=killed.run_id,
        undelivered_path=killed.undelivered_path,
    )
    resumed.log_metrics({"loss": 0.5}, step=1)  # the repeated epoch: already in the run
    resumed.log_metrics({"loss": 0.25}, step=2)
    history = MlflowClient(store_uri).get_metric_history(killed.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert not killed.undelivered_path.exists()


def test_replay_command_delivers_a_finished_process_leftovers(
    make_logger, store_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    outage = Outage(monkeypatch)
    logger = make_logger()
    outage.down = True
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    logger.set_status("KILLED", reason="stopped by a signal")
    logger.finalize("success")
    assert logger.undelivered_path.exists()
    run_dir = logger.undelivered_path.parent
    command = [sys.executable, "-m", "fer_lab.tracking.replay", str(run_dir)]
    no_uri = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    missing = subprocess.run(command, capture_output=True, text=True, timeout=120, env=no_uri)
    assert missing.returncode == 2 and "--tracking-uri" in missing.stderr
    done = subprocess.run(
        [*command, "--tracking-uri", store_uri], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store_uri)
    assert len(client.get_metric_history(logger.run_id, "loss")) == 3
    run = client.get_run(logger.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["fer_lab.failure_reason"] == "stopped by a signal"
    assert not logger.undelivered_path.exists()


def test_a_mangled_undelivered_file_is_named_not_dropped(make_logger) -> None:
    logger = make_logger()
    logger.undelivered_path.parent.mkdir(parents=True, exist_ok=True)
    logger.undelivered_path.write_text('{"run_id": "x", "kind": "batch"}\n{"run_id": \n')
    with pytest.raises(TrackingError, match=r"mlflow_undelivered\.jsonl, line 2: not a JSON"):
        make_logger()
    assert logger.undelivered_path.read_text().endswith('{"run_id": \n')  # left as it was


def test_a_sweeps_parent_run_deliveries_wait_out_an_outage(
    store_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The sweep's own calls (a trial's state on its run, found when delivered; the parent's
    status) wait like a run's, in order; one final leaderboard serves workers ending together."""
    from fer_lab.tracking.deliveries import ParentRunDeliveries
    from fer_lab.tracking.run_identity import LEADERBOARD_AT_TAG

    outage = Outage(monkeypatch)
    client = MlflowClient(store_uri)
    experiment = client.create_experiment(tmp_path.name, str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, tags={"fer_lab.sweep": "s"}).info.run_id
    child_tags = {"mlflow.parentRunId": parent, "optuna.trial": "3"}
    child = client.create_run(experiment, tags=child_tags).info.run_id
    queue = ParentRunDeliveries(client, tmp_path / "parent.jsonl", 0.0, resume=False)
    outage.down = True
    reason = ["fer_lab.failure_reason", "its worker died; retried as trial 9"]
    tags = [["optuna.trial_state", "FAIL"], reason]
    queue.deliver({"run_id": parent, "kind": "trial", "trial": 3, "tags": tags, "status": "KILLED"})
    queue.deliver({"run_id": parent, "kind": "status", "status": "FINISHED"})
    assert [item["kind"] for item in queue.pending] == ["trial", "status"]
    assert (tmp_path / "parent.jsonl").is_file() and not queue.drain(0.5)
    outage.down = False
    assert queue.drain(30) and not (tmp_path / "parent.jsonl").exists()
    run = client.get_run(child)
    assert run.info.status == "KILLED" and run.data.tags[reason[0]] == reason[1]
    assert client.get_run(parent).info.status == "FINISHED"

    queue.deliver({"run_id": parent, "kind": "leaderboard", "written_after": 0.0})
    written = client.get_run(parent).data.tags[LEADERBOARD_AT_TAG]
    assert [a.path for a in client.list_artifacts(parent, "leaderboard")]
    queue.deliver({"run_id": parent, "kind": "leaderboard", "written_after": float(written) - 1})
    assert client.get_run(parent).data.tags[LEADERBOARD_AT_TAG] == written  # not rewritten


def test_a_dead_sweep_process_deliveries_are_taken_over_by_the_next(
    store_uri: str, tmp_path: Path
) -> None:
    """A SIGKILLed worker's undelivered parent-run items (in its own folder) go first from the
    next process on that host; a live process's folder is left alone, and the dead one's status
    is not replayed over the running sweep's."""
    from fer_lab.sweeps.parent_runs import SweepRun
    from fer_lab.tracking.deliveries import ParentRunDeliveries

    client = MlflowClient(store_uri)
    experiment = client.create_experiment(tmp_path.name, str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, tags={"fer_lab.sweep": "s"}).info.run_id
    child_tags = {"mlflow.parentRunId": parent, "optuna.trial": "2"}
    child = client.create_run(experiment, tags=child_tags).info.run_id
    folders = tmp_path / "mlflow_parent"
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = folders / f"{socket.gethostname()}-{int(exited.stdout)}"
    live = folders / f"{socket.gethostname()}-{os.getppid()}"
    reason = ["fer_lab.failure_reason", "its worker died; retried as trial 5"]
    left = [
        {
            "run_id": parent,
            "kind": "trial",
            "trial": 2,
            "status": "KILLED",
            "tags": [["optuna.trial_state", "FAIL"], reason],
        },
        {"run_id": parent, "kind": "status", "status": "FINISHED"},
    ]
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "mlflow_undelivered.jsonl").write_text(
            "".join(json.dumps(i) + "\n" for i in left)
        )
    own = folders / f"{socket.gethostname()}-{os.getpid()}"
    queue = ParentRunDeliveries(client, own / "mlflow_undelivered.jsonl", 0.0, resume=False)
    sweep_run = SweepRun(client, parent, queue, own)

    sweep_run.adopt_dead_workers()

    assert sweep_run.adopted == [dead] and not queue.pending
    assert not (dead / "mlflow_undelivered.jsonl").exists()
    assert (live / "mlflow_undelivered.jsonl").is_file()  # its process may still send it
    run = client.get_run(child)
    assert run.info.status == "KILLED" and run.data.tags[reason[0]] == reason[1]
    assert client.get_run(parent).info.status == "RUNNING"


def test_a_run_creation_retried_after_a_lost_answer_makes_one_run(
    store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store creates the run but its answer is lost (a timeout): the retry finds that run by
    the key it was created with instead of making a second one."""
    from fer_lab.tracking.mlflow_logger import FERMLflowLogger

    monkeypatch.setattr("fer_lab.tracking.mlflow_logger.DRAIN_POLL_S", 0.0)
    create_run = MlflowClient.create_run
    created = []

    def answer_lost_once(client: MlflowClient, *args, **kwargs):
        created.append(create_run(client, *args, **kwargs).info.run_id)
        if len(created) == 1:
            raise requests.ReadTimeout("read timed out")
        return client.get_run(created[-1])

    monkeypatch.setattr(MlflowClient, "create_run", answer_lost_once)
    logger = FERMLflowLogger(
        experiment_name=tmp_path.name,
        tracking_uri=store_uri,
        undelivered_path=tmp_path / "mlflow_undelivered.jsonl",
        server_wait_s=30.0,
    )
    run_id = logger.run_id

    runs = MlflowClient(store_uri).search_runs([logger.experiment_id])
    assert created == [run_id] and [run.info.run_id for run in runs] == [run_id]
