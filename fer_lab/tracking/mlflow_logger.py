"""An MLflow logger that keeps training when the tracking server drops mid-run.

Every delivery goes through a `DeliveryQueue` (deliveries.py): while the store is unreachable
they wait, in order, in memory and in `undelivered_path`, so a short outage loses nothing. The
file lives in the run's output directory: it is per run (parallel trials never share one),
beside the checkpoints and artifacts that waiting uploads point to, and it survives the
process: a resumed run's logger sends what an earlier process left there before anything new,
and `python -m fer_lab.tracking.replay <run dir>` sends it for a run that will not be resumed.

A metric is logged once per step: Lightning sends `epoch` with both the validation and the
training metrics of an epoch, and a resumed run repeats what its killed process may already
have sent (the interrupted epoch's validation, a test that ran before the kill). MLflow
cannot replace a logged value, so the first one is kept.
"""

import logging
import os
import re
import time
import uuid
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_fabric.utilities.logger import _add_prefix, _convert_params, _flatten_dict
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from fer_lab.core.errors import TrackingError
from fer_lab.tracking.deliveries import DRAIN_POLL_S, DeliveryQueue
from fer_lab.tracking.mlflow_store import is_connectivity_error, prepare_tracking_store
from fer_lab.tracking.run_identity import CREATION_KEY_TAG, FAILURE_REASON_TAG
from fer_lab.tracking.ui_view import add_key_metrics_view

log = logging.getLogger(__name__)

UNDELIVERED_TAG = "fer_lab.undelivered"
_METRIC_NAME_JUNK = re.compile("[^a-zA-Z0-9_/. -]+")  # what MLflow rejects, as PL strips it
_PL_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}


class FERMLflowLogger(MLFlowLogger):
    """PL's MLFlowLogger with a prepared store, a race-free experiment lookup, and buffered
    deliveries; `retry_interval_s` spaces out retries, so an outage costs seconds per epoch.

    With `server_wait_s` (a sweep's trials get logger.server_wait_s; a single run 0, so it
    fails fast) an outage is a pause: the logger waits that long for a server that is down
    when it starts, when it creates its run, and when it ends with deliveries still waiting."""

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        *,
        undelivered_path: str | Path = "mlflow_undelivered.jsonl",
        retry_interval_s: float = 30.0,
        server_wait_s: float = 0.0,
        **kwargs: Any,
    ) -> None:
        tracking_uri = tracking_uri or os.getenv("MLFLOW_TRACKING_URI")
        self._server_wait_s = server_wait_s
        if tracking_uri:
            prepare_tracking_store(tracking_uri, wait_s=server_wait_s)
        super().__init__(experiment_name, run_name, tracking_uri, **kwargs)
        self.tags = {**(self.tags or {}), CREATION_KEY_TAG: uuid.uuid4().hex}
        self._creation_tried = False
        self._deliveries = DeliveryQueue(
            self._mlflow_client,
            undelivered_path,
            retry_interval_s,
            self._log_batch_kwargs,
            resume=rank_zero_only.rank == 0,  # what an earlier process of this run left
        )
        self._final_status: str | None = None
        # Per metric, the last step the run holds (or will, once the waiting items are
        # delivered); a resumed run reads each metric's from the store when it first logs it.
        self._last_step: dict[str, int] = {}
        self._read_from_store: set[str] | None = set() if self._run_id is not None else None
        for item in self._deliveries.pending:
            for key, _, _, step in item.get("metrics", []):
                self._note_step(key, step)

    @property
    def undelivered_path(self) -> Path:
        return self._deliveries.path

    def replay(self) -> int:
        """Send what an earlier process left undelivered; returns how many items remain."""
        self._deliveries.flush(force=True)
        return self._deliveries.remaining

    @property
    def has_run(self) -> bool:
        """Whether the MLflow run exists yet (reading `run_id` or `experiment` creates it)."""
        return self._initialized

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """PL's lazy run creation; the experiment lookup tolerates parallel trials creating it,
        and an unreachable store is waited for up to `server_wait_s`."""
        deadline = time.monotonic() + self._server_wait_s
        while True:
            try:
                return self._experiment_with_run()
            except Exception as error:
                if not is_connectivity_error(error) or time.monotonic() >= deadline:
                    raise
                log.warning(
                    "MLflow store unreachable while creating the run (%s); trying again for up "
                    "to %.0f s more (logger.server_wait_s)",
                    error,
                    deadline - time.monotonic(),
                )
                time.sleep(DRAIN_POLL_S)

    def _experiment_with_run(self) -> MlflowClient:
        try:
            if not self._initialized and self._run_id is None:
                if self._experiment_id is None:
                    self._experiment_id = self._experiment_id_for(self._experiment_name)
                elif self._creation_tried:  # the store may have made the run, its answer lost
                    self._run_id = self._run_created_earlier()
                self._creation_tried = self._run_id is None
            return super().experiment
        except MlflowException as error:
            if error.error_code != "PERMISSION_DENIED":
                raise
            user = os.environ.get("MLFLOW_TRACKING_USERNAME", "(no MLFLOW_TRACKING_USERNAME)")
            raise TrackingError(
                f"MLflow user {user} may not log to experiment {self._experiment_name!r} on "
                f"{self._tracking_uri}: {error.message}. Ask the server's admin for EDIT on it "
                "(README, Scale out), or log as another user (MLFLOW_TRACKING_USERNAME, "
                "MLFLOW_TRACKING_PASSWORD)."
            ) from None

    def _run_created_earlier(self) -> str | None:
        key = self.tags[CREATION_KEY_TAG]
        runs = self._mlflow_client.search_runs(
            [self._experiment_id], filter_string=f"tags.`{CREATION_KEY_TAG}` = '{key}'"
        )
        return runs[0].info.run_id if runs else None

    def _experiment_id_for(self, name: str) -> str:
        client = self._mlflow_client
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                created = client.create_experiment(name, artifact_location=self._artifact_location)
                add_key_metrics_view(client, created)
                return created
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = client.get_experiment_by_name(name)  # another process created it just now
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore "
                f"--experiment-id {found.experiment_id}`) or set logger.experiment_name."
            )
        add_key_metrics_view(client, found.experiment_id)
        return found.experiment_id

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        flat = _flatten_dict(_convert_params(params))
        # Truncated to 250 characters as PL does, so a resumed run re-logs equal values.
        self._deliver({"kind": "batch", "params": [[k, str(v)[:250]] for k, v in flat.items()]})

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        stamp = int(time.time() * 1000)
        prefixed = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        rows = [
            [_METRIC_NAME_JUNK.sub("", key), float(value), stamp, step or 0]
            for key, value in prefixed.items()
            if not isinstance(value, str)
        ]
        rows = [row for row in rows if self._is_new(row[0], row[3])]
        if rows:
            self._deliver({"kind": "batch", "metrics": rows})

    def _is_new(self, key: str, step: int) -> bool:
        """Whether the run lacks `key` at `step`; if so, it is taken as logged from now on."""
        if self._read_from_store is not None and key not in self._read_from_store:
            try:
                history = self._mlflow_client.get_metric_history(self.run_id, key)
            except Exception as error:
                if not is_connectivity_error(error):
                    raise
                return True  # unknown while the store is down: deliver (and buffer) it
            self._read_from_store.add(key)
            for metric in history:
                self._note_step(key, metric.step)
        if step <= self._last_step.get(key, -1):
            return False
        self._last_step[key] = step
        return True

    def _note_step(self, key: str, step: int) -> None:
        self._last_step[key] = max(step, self._last_step.get(key, step))

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._deliver({"kind": "batch", "tags": [[k, str(v)] for k, v in tags.items()]})

    @rank_zero_only
    def upload_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file to this run; buffered by path, so the file must stay until finalize."""
        path = str(Path(local_path).resolve())
        self._deliver({"kind": "artifact", "path": path, "artifact_path": artifact_path})

    @rank_zero_only
    def set_status(self, status: str, reason: str | None = None) -> None:
        """Set the run's status: a terminal one (KILLED, FAILED, FINISHED) is kept by later
        finalize calls, RUNNING reopens a resumed run (attached here, before its first step);
        `reason` goes to the tag fer_lab.failure_reason. With no run created yet there is
        nothing to mark."""
        terminal = RunStatus.is_terminated(RunStatus.from_string(status))  # rejects typos
        if not self._initialized:
            if self._run_id is None:
                return
            _ = self.experiment  # a resumed run's id is known: attach to it now
        self._final_status = status if terminal else None
        if reason:
            self.set_tags({FAILURE_REASON_TAG: reason[:5000]})
        self._deliver({"kind": "status", "status": status})

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """End the run, retrying every buffered delivery; report what still could not go."""
        if not self._initialized:
            return
        if self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)
        status = self._final_status or _PL_STATUS.get(status, status)
        self._deliver({"kind": "status", "status": status}, force=True)
        if self._deliveries.pending and self._server_wait_s:
            log.warning(
                "%d MLflow deliveries wait for %s; trying for up to %g s (logger.server_wait_s)",
                len(self._deliveries.pending),
                self._tracking_uri,
                self._server_wait_s,
            )
            self._deliveries.drain(self._server_wait_s)
        count = self._deliveries.remaining
        if not count:
            return
        log.warning(
            "%d MLflow deliveries (metrics, params, tags, artifacts, status) to %s, run %s, "
            "could not be made; they are kept in %s",
            count,
            self._tracking_uri,
            self._run_id,
            self.undelivered_path,
        )
        note = f"{count} items not delivered, kept in {self.undelivered_path}"
        try:  # lands when the server answers again (it may have rejected some items)
            self._deliveries.send(
                {"run_id": self._run_id, "kind": "batch", "tags": [[UNDELIVERED_TAG, note]]}
            )
        except Exception as error:
            if not is_connectivity_error(error):
                raise

    def _deliver(self, item: dict[str, Any], force: bool = False) -> None:
        self._deliveries.deliver({"run_id": self.run_id, **item}, force)
