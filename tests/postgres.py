"""A real PostgreSQL for the tests: the machine's cluster (Debian's postgresql package),
started if it is not running, with a password role for TCP on 127.0.0.1 and a fresh database
per test."""

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROLE, PASSWORD = "fer_lab_test", "fer_lab_test_pw"


def _as_postgres(sql: str) -> str:
    done = subprocess.run(
        ["su", "postgres", "-c", f'psql -v ON_ERROR_STOP=1 -tAc "{sql}"'],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _accepting(port: int) -> bool:
    """Whether the server takes connections: after a crash it listens before it has recovered
    ("the database system is starting up")."""
    ready = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)])
    return ready.returncode == 0


def _held_by_postgres(lock_file: Path) -> bool:
    """Whether the lock file's first line names a live postgres process (a restored machine
    may have given that PID to another program)."""
    try:
        pid = int(lock_file.read_text().split()[0])
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except (OSError, ValueError, IndexError):
        return False


def _remove_stale_lock_files(version: str, name: str, port: int) -> None:
    """Lock files a killed server left (a machine restored from a snapshot of a running
    one): PostgreSQL refuses to start beside them, even when their process is gone."""
    data_lock = Path(f"/var/lib/postgresql/{version}/{name}/postmaster.pid")
    socket_lock = Path(f"/var/run/postgresql/.s.PGSQL.{port}.lock")
    for lock_file in (data_lock, socket_lock):
        if lock_file.exists() and not _held_by_postgres(lock_file):
            lock_file.unlink()


def _start(version: str, name: str, port: int) -> None:
    """Started, tolerating a server that another start brought up meanwhile and lock files
    whose process was still exiting on the first try."""
    for _ in range(3):
        _remove_stale_lock_files(version, name, port)
        started = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"],
            capture_output=True,
            text=True,
        )
        for _ in range(60):
            if _accepting(port):
                return
            time.sleep(0.5)
    raise RuntimeError(
        f"PostgreSQL {version}/{name} did not start on port {port}:\n"
        f"{started.stdout}{started.stderr}"
    )


def start_cluster() -> int:
    """The first cluster's port, started (as root) if needed; skips without PostgreSQL."""
    if shutil.which("pg_lsclusters") is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    version, name, port = subprocess.run(
        ["pg_lsclusters", "-h"], capture_output=True, text=True, check=True
    ).stdout.split()[:3]
    if not _accepting(int(port)):
        _start(version, name, int(port))
    if _as_postgres(f"SELECT 1 FROM pg_roles WHERE rolname='{ROLE}'") != "1":
        _as_postgres(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}' CREATEDB")
    return int(port)


def fresh_database(port: int) -> str:
    """A new, empty database owned by the test role; its URL (password included)."""
    name = f"fer_lab_{uuid.uuid4().hex[:12]}"
    _as_postgres(f"CREATE DATABASE {name} OWNER {ROLE}")
    return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{port}/{name}"
