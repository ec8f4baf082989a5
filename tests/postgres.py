"""A real PostgreSQL for the tests: the machine's cluster (Debian's postgresql package),
started if it is not running, with a password role for TCP on 127.0.0.1 and a fresh database
per test."""

import shutil
import socket
import subprocess
import time
import uuid

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


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_cluster() -> int:
    """The first cluster's port, started (as root) if needed; skips without PostgreSQL."""
    if shutil.which("pg_lsclusters") is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    version, name, port = subprocess.run(
        ["pg_lsclusters", "-h"], capture_output=True, text=True, check=True
    ).stdout.split()[:3]
    if not _port_open(int(port)):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"], check=True
        )
        for _ in range(60):
            if _port_open(int(port)):
                break
            time.sleep(0.5)
    if _as_postgres(f"SELECT 1 FROM pg_roles WHERE rolname='{ROLE}'") != "1":
        _as_postgres(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}' CREATEDB")
    return int(port)


def fresh_database(port: int) -> str:
    """A new, empty database owned by the test role; its URL (password included)."""
    name = f"fer_lab_{uuid.uuid4().hex[:12]}"
    _as_postgres(f"CREATE DATABASE {name} OWNER {ROLE}")
    return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{port}/{name}"
