"""The MLflow tracking store, checked before a run uses it: a fast, clear failure for an
unreachable server (or, in a sweep, a bounded wait for it) and for one that refuses this
process's login (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD); a SQLite file created
once, under a lock (fer_lab/tracking/sqlite_files.py).
"""

import contextlib
import logging
import os
import sqlite3
import time
from urllib.parse import urlparse

from fer_lab.core.errors import TrackingError
from fer_lab.core.secrets import mask_secrets
from fer_lab.tracking.sqlite_files import (
    SQLITE_TIMEOUT_S,
    is_sqlite_url,
    prepared_sqlite,
    sqlite_path,
)

PROBE_TIMEOUT_S = 1.5
# MLflow's defaults (7 retries with exponential backoff, 120 s timeout) block a training step
# for minutes per call when the server is down; our buffering logger retries later instead.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

# How long this process waits for a tracking server that does not answer (s): set by a sweep
# for its own processes and its trials' (from logger.server_wait_s); unset, a run fails fast.
TRACKING_WAIT_ENV = "FER_LAB_TRACKING_WAIT_S"

log = logging.getLogger(__name__)
_prepared: set[str] = set()


class ServerUnreachable(TrackingError):
    """The tracking server did not answer (down, restarting, out of reach): an outage to wait
    out, not a mistake in the run."""


def tracking_wait_s() -> float:
    """This process's wait for an unreachable server: TRACKING_WAIT_ENV, else 0."""
    return float(os.environ.get(TRACKING_WAIT_ENV) or 0)


def prepare_tracking_store(uri: str, wait_s: float | None = None) -> None:
    """Make `uri` safe to use before an MlflowClient touches it.

    http(s): cap MLflow's HTTP retries (unless set in the environment), check `/health` and
    that the server takes this process's credentials, waiting up to `wait_s` seconds (default
    `tracking_wait_s()`) for a server that does not answer; sqlite: create and migrate the file
    once, under a lock, in WAL mode; anything else: nothing.
    """
    if urlparse(uri).scheme in ("http", "https"):
        for name, value in HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
        wait_s = tracking_wait_s() if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        while True:
            wait_for_server(uri, max(deadline - time.monotonic(), 0) if wait_s else 0)
            try:
                check_credentials(uri)
                break
            except ServerUnreachable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(2.0)
    elif is_sqlite_url(uri) and uri not in _prepared:
        with prepared_sqlite(uri):
            if not _has_default_experiment(uri):
                from mlflow import MlflowClient  # only here: the CLI's checks stay light

                MlflowClient(uri)  # builds the store: tables, migrations, Default experiment
        _prepared.add(uri)


def _has_default_experiment(url: str) -> bool:
    """MLflow creates the Default experiment last, so a store that has it is complete; the
    check keeps the lock short for the processes that come after the first."""
    path = sqlite_path(url)
    if path is None:
        return False
    with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as connection:
        try:
            query = "SELECT 1 FROM experiments WHERE experiment_id = 0"
            return connection.execute(query).fetchone() is not None
        except sqlite3.OperationalError:  # no such table: a fresh file
            return False


def is_connectivity_error(error: BaseException) -> bool:
    """Whether `error`, or what it wraps, says the store was unreachable or failing (connection
    refused, timeout, HTTP 5xx: worth retrying later) rather than that the request was wrong."""
    import requests
    from mlflow.exceptions import MlflowException

    unreachable = (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.RetryError,  # MLflow's retries on 5xx ran out
        requests.exceptions.ChunkedEncodingError,  # the connection dropped mid-response
    )
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, requests.HTTPError) and error.response is not None:
            return error.response.status_code >= 500
        if isinstance(error, unreachable):
            return True
        if isinstance(error, MlflowException):  # MLflow wraps a refused connection as a 500
            return error.get_http_status_code() >= 500
        error = error.__cause__ or error.__context__
    return False


def wait_for_server(uri: str, wait_s: float) -> None:
    """Return once `/health` answers; ServerUnreachable once it has not for `wait_s` seconds
    (with 0, after one probe)."""
    deadline = time.monotonic() + wait_s
    down_since = None
    while True:
        try:
            probe_server(uri)
        except ServerUnreachable as error:
            if time.monotonic() >= deadline:
                if not wait_s:
                    raise
                raise ServerUnreachable(
                    f"{error} Waited {wait_s:g} s for it (logger.server_wait_s)."
                ) from None
            if down_since is None:
                down_since = time.monotonic()
                log.warning("%s Waiting up to %g s (logger.server_wait_s)", error, wait_s)
            time.sleep(min(2.0, max(deadline - time.monotonic(), 0)))
            continue
        if down_since is not None:
            waited = time.monotonic() - down_since
            log.info("MLflow tracking server %s answers again after %.0f s", uri, waited)
        return


def probe_server(uri: str) -> None:
    """Raise ServerUnreachable within 2 x PROBE_TIMEOUT_S (connect, read) unless `/health`
    answers."""
    import requests
    from mlflow.environment_variables import (
        MLFLOW_TRACKING_INSECURE_TLS,
        MLFLOW_TRACKING_SERVER_CERT_PATH,
    )

    verify = MLFLOW_TRACKING_SERVER_CERT_PATH.get() or not MLFLOW_TRACKING_INSECURE_TLS.get()
    url = uri.rstrip("/") + "/health"
    try:
        response = requests.get(url, timeout=(PROBE_TIMEOUT_S, PROBE_TIMEOUT_S), verify=verify)
    except requests.Timeout:
        problem = f"no answer within {PROBE_TIMEOUT_S:g} s (timeout)"
    except requests.ConnectionError as error:
        refused = "refused" in str(error).lower()
        problem = "connection refused" if refused else f"cannot connect ({error})"
    else:
        # 401/403: a server (or its proxy) that wants credentials is up; MLflow sends them.
        if response.ok or response.status_code in (401, 403):
            return
        problem = f"HTTP {response.status_code} on /health"
    port = urlparse(uri).port or 5000
    raise ServerUnreachable(
        f"MLflow tracking server {uri} is not reachable: GET {url}: {problem}. "
        f"Start it (`make ui`, or `mlflow server --backend-store-uri sqlite:///mlflow.db "
        f"--port {port}`), or unset MLFLOW_TRACKING_URI (or logger.tracking_uri) to log to "
        f"./mlflow.db, or train with logger=csv."
    )


# Any authenticated read: it answers 401 without, or with a wrong, login.
LOGIN_PROBE = "/api/2.0/mlflow/experiments/search"
LOGIN_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# A login's check is a deliberately slow password hash: seconds on a busy server.
LOGIN_TIMEOUT_S = 30.0


def check_credentials(uri: str) -> None:
    """Raise TrackingError, naming MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, when
    the server (MLflow's basic-auth app, or a proxy in front of it) refuses the login MLflow
    sends from them; the request is MLflow's own, with whatever credentials it would send."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri),
            LOGIN_PROBE,
            "GET",
            params={"max_results": 1},
            max_retries=0,
            timeout=LOGIN_TIMEOUT_S,
            raise_on_status=False,
        )
    except Exception as error:
        if not is_connectivity_error(error):
            raise
        raise ServerUnreachable(
            f"MLflow tracking server {mask_secrets(uri)} answers /health but not the login "
            f"check ({error})"
        ) from None
    if response.status_code != 401:
        return
    given = [name for name in LOGIN_VARIABLES if os.environ.get(name)]
    where = f"MLflow tracking server {mask_secrets(uri)}"
    both = " and ".join(LOGIN_VARIABLES)
    if len(given) == len(LOGIN_VARIABLES):
        user = os.environ["MLFLOW_TRACKING_USERNAME"]
        problem = f"refused the login of user {user!r} (HTTP 401): check that {both} hold"
    elif given:
        missing = next(name for name in LOGIN_VARIABLES if name not in given)
        problem = f"wants a login (HTTP 401); {given[0]} is set, {missing} is not: set {both} to"
    else:
        problem = f"wants a login (HTTP 401) and none was given: set {both} to"
    raise TrackingError(
        f"{where} {problem} your user name on it and its password (its admin creates users and "
        "grants them an experiment: README, Scale out)."
    )
