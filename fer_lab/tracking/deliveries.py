"""MLflow deliveries in order, kept while the store is unreachable.

Items are JSON-able dicts: a `log_batch` (metrics, params, tags), an artifact upload (by
path) or a status, each naming its run. Deliveries that fail because the store is unreachable
(connection refused, timeouts, HTTP 5xx) wait in memory and in a file, one item per line, and
go first once the store answers; real errors (a param re-logged with another value) raise. The
file survives the process, so a later process (a resumed run, `python -m
fer_lab.tracking.replay`) starts from what it holds.
"""

import json
import logging
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from fer_lab.core.errors import TrackingError
from fer_lab.tracking.mlflow_store import is_connectivity_error

log = logging.getLogger(__name__)


class DeliveryQueue:
    """Sends items to `client` in order; retries at most every `retry_interval_s` seconds."""

    def __init__(
        self,
        client: MlflowClient,
        path: str | Path,
        retry_interval_s: float,
        log_batch_kwargs: dict[str, Any] | None = None,
        resume: bool = True,
    ) -> None:
        self.client = client
        self.path = Path(path).resolve()
        self.retry_interval_s = retry_interval_s
        self.log_batch_kwargs = log_batch_kwargs or {}
        self.pending = self._load() if resume else []  # to retry, in order
        self.dropped: list[dict[str, Any]] = []  # rejected on retry: reported, never resent
        self._failed_at = 0.0

    @property
    def remaining(self) -> int:
        return len(self.pending) + len(self.dropped)

    def _load(self) -> list[dict[str, Any]]:
        """What an earlier process could not deliver."""
        if not self.path.is_file():
            return []
        items = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise TrackingError(
                    f"{self.path}, line {number}: not a JSON item ({error}); mend or remove "
                    "that line, then run the command again"
                ) from None
        log.info("%d undelivered MLflow items in %s go first", len(items), self.path)
        return items

    def deliver(self, item: dict[str, Any], force: bool = False) -> None:
        """Send `item` after everything still waiting, or keep it while the store is down."""
        if not self.pending or self.flush(force):
            try:
                self.send(item)
                return
            except Exception as error:
                if not is_connectivity_error(error):
                    raise
                log.warning(
                    "MLflow store unreachable (%s); training goes on, deliveries wait in %s "
                    "and are retried every %g s",
                    error,
                    self.path,
                    self.retry_interval_s,
                )
                self._failed_at = time.monotonic()
        self.pending.append(item)
        self._save()

    def flush(self, force: bool = False) -> bool:
        """Send the waiting items in order; False while the store stays unreachable. An item
        the store rejects (say, its artifact file is gone) stays in the file, reported."""
        if not force and time.monotonic() - self._failed_at < self.retry_interval_s:
            return False
        count = len(self.pending)
        while self.pending:
            try:
                self.send(self.pending[0])
            except Exception as error:
                if is_connectivity_error(error):
                    self._failed_at = time.monotonic()
                    self._save()
                    return False
                log.error("MLflow rejected a buffered delivery (%s): %s", error, self.pending[0])
                self.dropped.append(self.pending[0])
            self.pending.pop(0)
        if count:
            log.info("MLflow store answers: %d waiting items retried", count)
        self._save()
        return True

    def _save(self) -> None:
        """Mirror what is undelivered to the file (gone once everything went through)."""
        items = self.dropped + self.pending
        if not items:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        draft = self.path.with_suffix(".tmp")  # replaced whole: a crash keeps one version
        draft.write_text("".join(json.dumps(item) + "\n" for item in items))
        draft.replace(self.path)

    def send(self, item: dict[str, Any]) -> None:
        """One delivery, now; raises what the store raises."""
        client, run_id = self.client, item["run_id"]
        if item["kind"] == "artifact":
            client.log_artifact(run_id, item["path"], item["artifact_path"])
        elif item["kind"] == "status":
            if RunStatus.is_terminated(RunStatus.from_string(item["status"])):
                client.set_terminated(run_id, item["status"])
            else:
                client.update_run(run_id, status=item["status"])
        else:
            client.log_batch(
                run_id,
                metrics=[Metric(*row) for row in item.get("metrics", [])],
                params=[Param(*row) for row in item.get("params", [])],
                tags=[RunTag(*row) for row in item.get("tags", [])],
                **self.log_batch_kwargs,
            )
