"""Where an Optuna study lives, shared by the sweeper and its trials (in this process, in
launcher workers, or on other machines): a journal file or a database URL."""

from pathlib import Path
from typing import TYPE_CHECKING

from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from fer_lab.tracking.sqlite_files import SQLITE_TIMEOUT_S, is_sqlite_url, prepared_sqlite

if TYPE_CHECKING:
    import optuna


def open_storage(spec: str) -> str | BaseStorage:
    """A journal file path, or an RDB URL (postgresql://, ...) as is. Optuna locks a journal
    per write; a sqlite:// file is created under a lock, in WAL mode, and its connections
    wait for the write lock, so parallel trials never see "database is locked"."""
    if is_sqlite_url(spec):
        return sqlite_study_storage(spec)
    if "://" in spec:
        return spec
    path = Path(spec).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def sqlite_study_storage(url: str) -> "optuna.storages.RDBStorage":
    """Optuna's storage for a SQLite file; its table creation races on a fresh file too."""
    from optuna.storages import RDBStorage

    with prepared_sqlite(url):
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
