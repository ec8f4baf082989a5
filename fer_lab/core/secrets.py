"""Passwords kept out of everything fer_lab writes (MLflow params, tags and run names, logs,
best.yaml and the configs Hydra saves): those in URLs (`postgresql://user:password@host/db`),
and the values of the environment variables that hold credentials (MLFLOW_TRACKING_PASSWORD,
...), as typed and as the HTTP basic-auth header carries them."""

import base64
import logging
import os
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

MASK = "***"
# scheme://user:password@host: the password is what lies between the first ':' after the
# user name and the last '@' before the host.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)([^\s/]*)(@)")
SECRET_VARIABLES = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "PGPASSWORD",
)


def secret_values() -> list[str]:
    """This process's credentials from the environment, longest first, with the encoded
    `user:password` of MLflow's basic-auth header."""
    values = {value for name in SECRET_VARIABLES if (value := os.environ.get(name))}
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if password:
        login = f"{os.environ.get('MLFLOW_TRACKING_USERNAME', '')}:{password}"
        values.add(base64.b64encode(login.encode()).decode())
    return sorted(values, key=len, reverse=True)


def mask_secrets(text: str) -> str:
    """`text` with the password of every URL in it, and every credential of SECRET_VARIABLES,
    replaced by ***."""
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", text)
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


def masked(value: Any) -> Any:
    """Strings masked, inside lists, tuples and dicts too; other values as they are."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {key: masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(masked(item) for item in value)
    return value


def mask_files(paths: list[Path]) -> None:
    """Rewrite each existing file with its URL passwords masked (only when it has any)."""
    for path in paths:
        if path.is_file():
            text = path.read_text()
            if mask_secrets(text) != text:
                path.write_text(mask_secrets(text))


def mask_log_record(record: logging.LogRecord) -> logging.LogRecord:
    """`record` with URL passwords masked in its message (formatted once when it has any)."""
    message = record.getMessage()
    if mask_secrets(message) != message:
        record.msg, record.args = mask_secrets(message), ()
    return record


def install_log_masking() -> None:
    """Every log record this process makes from now on is masked, whatever its logger or
    handler (Hydra replaces the handlers for each job): a record-factory wrapper, once."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "masks_secrets", False):
        return

    def masking_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return mask_log_record(factory(*args, **kwargs))

    masking_factory.masks_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masking_factory)


class MaskSecrets(Callback):
    """Hydra callback: URL passwords typed on the command line stay out of the logs and of the
    configs Hydra saves for a run or a sweep (`.hydra/*.yaml`, `multirun.yaml`).

    Hydra writes a job's configs just before the job starts, so they are masked at its
    start, and the sweep's `multirun.yaml` whenever a job of it starts.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_masking()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_masking()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_masking()  # also in launcher worker processes
        hydra = config.hydra
        files = []
        if hydra.output_subdir is not None:
            saved = Path(hydra.runtime.output_dir) / hydra.output_subdir
            files += [saved / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
        if hydra.mode == RunMode.MULTIRUN:
            files.append(Path(hydra.sweep.dir) / "multirun.yaml")
        mask_files(files)
