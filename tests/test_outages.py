"""Outages as pauses, without training: a sweep's wait for its tracking server, its retries of
a study database that drops the connection, and which errors count as outages (never charged
to max_failures). The end-to-end checks are tests/test_sweep_load.py's."""

import http.server
import threading
import time

import pytest
import requests
from mlflow.exceptions import MlflowException
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import IntegrityError, OperationalError

from fer_lab.core.errors import TrackingError
from fer_lab.sweeps.optuna_sweeper import is_outage
from fer_lab.sweeps.storage import is_connection_error, retry_storage
from fer_lab.tracking.mlflow_store import (
    TRACKING_WAIT_ENV,
    ServerUnreachable,
    prepare_tracking_store,
    tracking_wait_s,
    wait_for_server,
)

from .test_stores import _Health, closed_port


def test_a_sweep_waits_for_a_server_that_comes_up() -> None:
    port = closed_port()
    started: list[http.server.HTTPServer] = []

    def come_up() -> None:
        time.sleep(1.0)  # down at first
        server = http.server.HTTPServer(("127.0.0.1", port), _Health)
        started.append(server)
        server.serve_forever()

    thread = threading.Thread(target=come_up, daemon=True)
    thread.start()
    try:
        wait_for_server(f"http://127.0.0.1:{port}", wait_s=60)
        assert started  # it returned because the server answered
    finally:
        for server in started:
            server.shutdown()
            server.server_close()


def test_the_wait_is_bounded_and_a_single_run_does_not_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ServerUnreachable, match=r"Waited 1 s for it \(logger.server_wait_s\)"):
        wait_for_server(url, wait_s=1)
    monkeypatch.delenv(TRACKING_WAIT_ENV, raising=False)
    assert tracking_wait_s() == 0
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as raised:
        prepare_tracking_store(url)  # what `python -m fer_lab.train` does: one probe
    assert "Waited" not in str(raised.value)
    assert isinstance(raised.value, TrackingError)  # exit code 2, as before
    monkeypatch.setenv(TRACKING_WAIT_ENV, "600")  # what a sweep sets for its processes
    assert tracking_wait_s() == 600
    assert time.monotonic() - started < 60


def dropped_connection() -> StorageInternalError:
    """What Optuna raises when PostgreSQL goes away under it."""
    try:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    except OperationalError as error:
        try:
            raise StorageInternalError("An exception is raised during the commit.") from error
        except StorageInternalError as wrapped:
            return wrapped


def test_storage_calls_are_retried_while_the_database_is_unreachable() -> None:
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise dropped_connection()
        return "told"

    assert retry_storage(flaky, wait_s=60) == "told" and len(attempts) == 3

    def wrong() -> None:
        attempts.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    attempts.clear()
    with pytest.raises(IntegrityError):
        retry_storage(wrong, wait_s=60)
    assert len(attempts) == 1  # a real error is not retried

    def down() -> None:
        raise dropped_connection()

    with pytest.raises(StorageInternalError):
        retry_storage(down, wait_s=0)  # the wait is bounded


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (ServerUnreachable("MLflow tracking server ... is not reachable"), True),
        (MlflowException("API request failed with exception ... refused"), True),
        (requests.ConnectionError("[Errno 111] Connection refused"), True),
        (dropped_connection(), True),
        (TrackingError("MLflow user x may not log to experiment 'y'"), False),
        (ValueError("batch_size must be positive"), False),
        (RuntimeError("CUDA out of memory"), False),
    ],
)
def test_outages_are_told_from_a_trials_own_failures(error: Exception, outage: bool) -> None:
    assert is_outage(error) is outage
    assert is_connection_error(error) is isinstance(error, StorageInternalError)
