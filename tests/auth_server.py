"""A real authenticated MLflow tracking server for the tests, as README's scale-out section runs
it: `mlflow server --app-name basic-auth` over PostgreSQL (runs and users each in a database of
their own), artifacts proxied to a folder of its own, the admin and database passwords from the
environment (never in a file or on the command line), and users made through its REST API."""

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from .postgres import PASSWORD, fresh_database

ADMIN = "admin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def logged_in(username: str, password: str) -> Iterator[None]:
    """MLflow clients made in the body log in as `username`."""
    saved = {
        name: os.environ.get(name)
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    }
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
        username,
        password,
    )
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class AuthServer:
    """The server in `folder`: `start()`, `stop()` (and start again: its databases stay)."""

    def __init__(self, folder: Path, postgres_port: int) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_password = "admin-" + secrets.token_urlsafe(16)
        # Without the password: the server's libpq reads it from PGPASSWORD.
        self.backend_store = fresh_database(postgres_port).replace(f":{PASSWORD}@", "@")
        users_store = fresh_database(postgres_port).replace(f":{PASSWORD}@", "@")
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "basic_auth.ini"
        # No permission without a grant; credentials checked once a minute per user (each check
        # is a deliberately slow PBKDF2 hash); no admin password in the file.
        self.config.write_text(
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = {users_store}\n"
            f"admin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 60\n"
        )
        self.process: subprocess.Popen | None = None
        self.log_path = folder / "mlflow_server.log"

    def start(self, timeout_s: float = 300) -> None:
        address = f"127.0.0.1:{self.port}"
        command = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--app-name",
            "basic-auth",
            *("--backend-store-uri", self.backend_store),
            *("--artifacts-destination", (self.folder / "artifacts").as_uri()),
            "--serve-artifacts",
            *("--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
            *("--allowed-hosts", f"{address},localhost:{self.port}"),
            *("--cors-allowed-origins", f"http://{address}"),
        ]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "MLFLOW_AUTH_CONFIG_PATH": str(self.config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "PGPASSWORD": PASSWORD,
            # A few connections per store: the machine's PostgreSQL takes 100 in all.
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "4",
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "4",
        }
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError(f"no MLflow server on {self.url}: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the server and its uvicorn workers (its own process group)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def add_user(self, name: str, experiment: str, permission: str) -> str:
        """A new user with `permission` (READ, EDIT, ...) on `experiment` (created if need be),
        made by the admin; returns the user's password."""
        from mlflow import MlflowClient
        from mlflow.server import get_app_client

        password = f"{name}-" + secrets.token_urlsafe(16)
        with logged_in(ADMIN, self.admin_password):
            client = MlflowClient(self.url)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            auth = get_app_client("basic-auth", tracking_uri=self.url)
            auth.create_user(name, password)
            auth.grant_user_permission(name, "experiment", experiment_id, permission)
        return password
