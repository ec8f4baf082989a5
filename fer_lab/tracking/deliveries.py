"""MLflow deliveries in order, kept while the store is unreachable.

Items are JSON-able dicts: a `log_batch` (metrics, params, tags), an artifact upload (by
path) or a status, each naming its run (a sweep's parent run has two kinds more:
ParentRunDeliveries). Deliveries that fail because the store is unreachable
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
from fer_lab.tracking.run_identity import LEADERBOARD_AT_TAG

log = logging.getLogger(__name__)
DRAIN_POLL_S = 2.0  # how often `drain` tries a store that stays down


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
        items = read_items(self.path)
        if items:
            log.info("%d undelivered MLflow items in %s go first", len(items), self.path)
        return items

    def adopt(self, path: Path, leave_out: frozenset[str] = frozenset()) -> int:
        """Put what a dead process left in its queue's file `path` ahead of this queue's items,
        then remove that file (after this queue's file holds them); how many were taken. Items
        of the kinds in `leave_out` are not taken."""
        items = [item for item in read_items(path) if item["kind"] not in leave_out]
        self.pending[:0] = items
        self._save()
        path.unlink(missing_ok=True)
        return len(items)

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

    def drain(self, wait_s: float) -> bool:
        """Retry the waiting items until none is left or `wait_s` seconds have passed; whether
        they all went (a sweep's trial hands its results over before it ends)."""
        deadline = time.monotonic() + wait_s
        while not self.flush(force=True):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(DRAIN_POLL_S, max(deadline - time.monotonic(), 0)))
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


def read_items(path: Path) -> list[dict[str, Any]]:
    """A queue file's items, in order; none when there is no file."""
    if not path.is_file():
        return []
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise TrackingError(
                f"{path}, line {number}: not a JSON item ({error}); mend or remove that line, "
                "then run the command again"
            ) from None
    return items


class ParentRunDeliveries(DeliveryQueue):
    """A parent run's deliveries, kept while the server is down like a run's; besides
    DeliveryQueue's kinds, `trial` (tag a trial's run and end it, the run looked up when it
    is delivered) and `leaderboard` (publish the parent's, unless another worker has since
    `written_after`: the workers of a sweep end together, and one final board will do)."""

    def send(self, item: dict[str, Any]) -> None:
        if item["kind"] == "leaderboard":
            from fer_lab.tracking.leaderboard import publish  # pandas, matplotlib: only here

            tags = self.client.get_run(item["run_id"]).data.tags
            if float(tags.get(LEADERBOARD_AT_TAG, 0)) > item["written_after"]:
                return
            self.client.set_tag(item["run_id"], LEADERBOARD_AT_TAG, f"{time.time():.3f}")
            publish(self.client, item["run_id"])
        elif item["kind"] == "trial":
            run_id = self._trial_run(item["run_id"], item["trial"])
            if run_id is None:  # the trial ended before its run was created
                return
            self.client.log_batch(run_id, tags=[RunTag(*tag) for tag in item["tags"]])
            if item.get("status"):
                self.client.set_terminated(run_id, status=item["status"])
        else:
            super().send(item)

    def _trial_run(self, parent_run_id: str, number: int) -> str | None:
        runs = self.client.search_runs(
            [self.client.get_run(parent_run_id).info.experiment_id],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
                f"and tags.`optuna.trial` = '{number}'"
            ),
            max_results=1,
        )
        return runs[0].info.run_id if runs else None
