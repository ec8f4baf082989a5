"""SQLite files (MLflow's, Optuna's) that several processes can create and write at once.

A fresh file raced by parallel trials breaks MLflow's schema creation ("table
_alembic_tmp_... already exists", half-applied migrations), so the first process per machine
creates and migrates it under a file lock while the others wait. The file is switched to WAL
(persistent in the file), so readers (`mlflow ui`) never block writers, and connections wait
for the write lock instead of failing with "database is locked": MLflow's sessions wait 20 s
(its own `PRAGMA busy_timeout`), Optuna's SQLITE_TIMEOUT_S (sqlite3's connect timeout).
"""

import contextlib
import hashlib
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock, Timeout

from fer_lab.core.errors import TrackingError

SQLITE_TIMEOUT_S = 60.0


def is_sqlite_url(url: str) -> bool:
    """sqlite:///file (or a driver variant, sqlite+pysqlite:///file)."""
    return urlparse(url).scheme.split("+")[0] == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///file` URL; None for an in-memory database."""
    path = url.split("://", 1)[1].split("?", 1)[0].removeprefix("/")
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def prepared_sqlite(url: str) -> Iterator[None]:
    """Hold the machine-wide creation lock of a SQLite file, switched to WAL, while the body
    creates or migrates its tables; other processes preparing the same file wait."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    # In the temp dir, like MLflow's own lock, so no lock files appear beside the database.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    lock = FileLock(Path(tempfile.gettempdir()) / f"fer_lab-sqlite-{digest}.lock")
    try:
        lock.acquire(timeout=10 * SQLITE_TIMEOUT_S)
    except Timeout as error:
        raise TrackingError(
            f"Another process has held the lock on {path} ({lock.lock_file}) for "
            f"{10 * SQLITE_TIMEOUT_S:g} s; stop it, or delete the lock file if none runs."
        ) from error
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
        yield
    finally:
        lock.release()
