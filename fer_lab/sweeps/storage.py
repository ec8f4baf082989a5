"""Where an Optuna study lives, shared by the sweeper and its trials (in this process, in
launcher workers, or on other machines): a journal file or a database URL; and the lock its
workers take turns under to count its trials and ask for new ones."""

import contextlib
import functools
import hashlib
import logging
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import optuna
from filelock import FileLock
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from fer_lab.tracking.sqlite_files import (
    SQLITE_TIMEOUT_S,
    is_sqlite_url,
    prepared_sqlite,
    sqlite_path,
)

log = logging.getLogger(__name__)
# Workers racing to create Optuna's tables on an empty database: the losers try again.
SCHEMA_ATTEMPTS = 5
# How long a sweep's processes keep trying a study database that does not answer (a server
# restarting, a network blip) before they give up.
STORAGE_WAIT_S = 300.0
T = TypeVar("T")


def open_storage(
    spec: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    on_lost: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> BaseStorage:
    """A journal file path or a database URL (sqlite://, postgresql://user:pw@host/db, ...).

    Optuna locks a journal per write; a sqlite:// file is created under a lock, in WAL mode,
    and its connections wait for the write lock. Databases keep Optuna's heartbeat of each
    running trial (every `heartbeat_interval` s; `on_lost` is called for each trial
    `optuna.storages.fail_stale_trials` fails once its heartbeat is `grace_period` s old); a
    journal file gets fer_lab's (fer_lab/sweeps/heartbeats.py)."""
    heartbeat = {
        "heartbeat_interval": heartbeat_interval,
        "grace_period": grace_period,
        "heartbeat_stale_trial_callback": on_lost,
    }
    with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if is_sqlite_url(spec):
            with prepared_sqlite(spec):
                connect = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
                return RDBStorage(spec, engine_kwargs=connect, **heartbeat)
        if "://" in spec:
            return database_storage(spec, **heartbeat)
    path = Path(spec).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


@functools.cache
def shared_storage(
    spec: str, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> BaseStorage:
    """`open_storage`, once per process: the trials a worker runs one after another share its
    database connections instead of each opening (and leaving) a pool of its own."""
    return open_storage(spec, heartbeat_interval, grace_period)


def database_storage(url: str, **heartbeat: Any) -> RDBStorage:
    """Optuna's storage on a database server. Two workers started together on an empty
    database both create Optuna's tables, and one fails (`alembic_version` already exists);
    it waits a moment and opens the tables the other made. Pooled connections are checked
    before use, so a restarted server costs a reconnect, not an error."""
    from sqlalchemy.exc import DBAPIError

    engine = {"pool_pre_ping": True}
    for _ in range(SCHEMA_ATTEMPTS - 1):
        try:
            return RDBStorage(url, engine_kwargs=engine, **heartbeat)
        except DBAPIError as error:
            log.info("Optuna storage not ready (%s); trying again", type(error.orig).__name__)
            time.sleep(0.5 + random.random())
    return RDBStorage(url, engine_kwargs=engine, **heartbeat)  # the last attempt raises


def is_connection_error(error: BaseException | None) -> bool:
    """Whether `error`, or what it wraps (Optuna wraps SQLAlchemy's), says the database could
    not be reached or dropped the connection, rather than that the request was wrong."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OperationalError | InterfaceError):
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        error = error.__cause__ or error.__context__
    return False


def retry_storage(action: Callable[[], T], wait_s: float = STORAGE_WAIT_S) -> T:
    """`action()`, tried again while the study's database is unreachable, for up to `wait_s`
    seconds: a PostgreSQL restart costs a sweep a pause, not its trials."""
    deadline = time.monotonic() + wait_s
    down_since = None
    while True:
        try:
            result = action()
        except Exception as error:
            if not is_connection_error(error) or time.monotonic() >= deadline:
                raise
            if down_since is None:
                down_since = time.monotonic()
                log.warning("Optuna storage unreachable (%s); trying again", type(error).__name__)
            time.sleep(1.0)
            continue
        if down_since is not None:
            log.info("Optuna storage answers again after %.0f s", time.monotonic() - down_since)
        return result


@contextlib.contextmanager
def study_lock(spec: str, study_name: str) -> Iterator[None]:
    """Held while a worker counts the study's trials and asks for new ones, so that workers
    in several processes, or on several machines sharing a database, never ask for more
    than `n_trials` between them.

    A journal file: a lock file beside it (its filesystem must support locks). SQLite: a
    lock file in this machine's temp folder. PostgreSQL: an advisory lock in the database.
    Other databases: no lock (a warning), so simultaneous asks may overshoot by a trial.
    """
    key = hashlib.sha1(f"{spec}|{study_name}".encode()).hexdigest()[:16]
    scheme = urlparse(spec).scheme.split("+")[0] if "://" in spec else ""
    if not scheme:
        path = Path(spec).expanduser()
        with FileLock(path.with_name(f"{path.name}.{key}.lock")):
            yield
    elif is_sqlite_url(spec):
        where = sqlite_path(spec) or Path("memory")
        with FileLock(Path(tempfile.gettempdir()) / f"fer_lab-study-{key}-{where.name}.lock"):
            yield
    elif scheme in ("postgresql", "postgres"):
        yield from _postgres_advisory_lock(spec, int(key, 16) - 2**63)
    else:
        log.warning("No study lock for %s databases: workers may overshoot n_trials", scheme)
        yield


def _postgres_advisory_lock(url: str, key: int) -> Iterator[None]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                # A restarted server released the lock with the connection it dropped.
                with contextlib.suppress(DBAPIError):
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()
