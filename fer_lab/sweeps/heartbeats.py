"""Telling dead trials from live ones on every Optuna storage, and retrying the dead.

A running trial beats every `heartbeat_interval` seconds while its worker lives: fer_lab's
heartbeat on every storage, a trial system attribute holding the beat's wall time (so workers
sharing a study across machines need their clocks in sync, as NTP keeps them), and on database
storages (SQLite, PostgreSQL) Optuna's own as well, stamped with the database's clock. The next
worker that asks for a trial fails every trial whose last beat, by either, is older than
`grace_period` seconds (a trial that never beat: its start), under the study's lock, and
queues a retry of it with the same
parameters (Optuna's RetryHeartbeatStaleTrialCallback semantics: a WAITING copy carrying
`failed_trial` and `retry_history`), up to `max_retries` times. The dead trial and its retry
count as one trial towards `n_trials` (`counted_trials`).
"""

import logging
import threading
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "fer_lab.heartbeat"
# Optuna's names (RetryHeartbeatStaleTrialCallback), so its helpers read fer_lab's retries.
FAILED_TRIAL_ATTR, RETRY_HISTORY_ATTR = "failed_trial", "retry_history"

# Trials this process beats for already (the sweeper's thread covers an in-process trial).
_beating: set[int] = set()
_beating_lock = threading.Lock()


def has_optuna_heartbeat(storage: BaseStorage) -> bool:
    """Whether the storage keeps Optuna's heartbeat: an RDBStorage opened with an interval, also
    behind the cache a study wraps it in."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def record_heartbeat(storage: BaseStorage, trial_id: int) -> None:
    """One beat of a running trial; raises UpdateFinishedTrialError once it is finished."""
    storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
    if has_optuna_heartbeat(storage):
        storage.record_heartbeat(trial_id)


class KeepAlive:
    """Beats for `trial_ids` every `interval_s` seconds in a daemon thread while the `with`
    body runs: a killed process stops beating. Trials another KeepAlive of this process beats
    for already are left to it. Storage errors (a database restarting) are logged and the
    beat goes on; a trial that finished (or was failed by another worker) is dropped."""

    def __init__(self, storage: BaseStorage, trial_ids: Iterable[int], interval_s: float) -> None:
        self.storage = storage
        self.interval_s = interval_s
        with _beating_lock:
            self._claimed = {trial_id for trial_id in trial_ids if trial_id not in _beating}
            _beating.update(self._claimed)
        self.trial_ids = sorted(self._claimed)  # those still running
        self._stop = threading.Event()
        self._failing = False  # reported once per outage
        self._thread = threading.Thread(target=self._run, name="fer_lab-heartbeat", daemon=True)

    def start(self) -> None:
        self._beat()  # alive from the start, before the first interval
        if self.trial_ids:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 30)
        with _beating_lock:
            _beating.difference_update(self._claimed)

    def __enter__(self) -> "KeepAlive":
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat()

    def _beat(self) -> None:
        for trial_id in list(self.trial_ids):
            try:
                record_heartbeat(self.storage, trial_id)
            except UpdateFinishedTrialError:
                self.trial_ids.remove(trial_id)
            except Exception as error:  # the storage is down for a moment: beat again later
                if not self._failing:
                    log.warning("Heartbeat of trial id %d not recorded: %s", trial_id, error)
                self._failing = True
            else:
                self._failing = False


@dataclass
class LostTrial:
    """A trial failed because its worker stopped beating, and the number of its retry (None
    when it had been retried `max_retries` times already)."""

    trial: FrozenTrial
    retry_number: int | None


class LostTrials:
    """Fails the dead trials of a study and queues their retries.

    Also Optuna's `heartbeat_stale_trial_callback` of a database storage (`open_storage(...,
    on_lost=...)`), which `optuna.storages.fail_stale_trials` calls for each trial it fails."""

    def __init__(self, grace_period: float, max_retries: int) -> None:
        self.grace_period = grace_period
        self.max_retries = max_retries
        self._found: list[LostTrial] = []

    def fail_dead(self, study: optuna.Study) -> list[LostTrial]:
        """Fail the study's trials whose heartbeat is older than `grace_period`, retry each;
        call under the study's lock, so that no two workers fail (and retry) one trial."""
        storage = study._storage
        if has_optuna_heartbeat(storage):
            with warnings.catch_warnings():  # experimental since Optuna 2.9, unchanged since
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # calls self for each trial it fails
        # fer_lab's heartbeat; on a database it also catches a trial created just as the
        # database went down, before its first beat (Optuna's never sees one that never beat).
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if now - last_beat(trial) <= self.grace_period:
                continue
            try:
                failed = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:  # it finished just now
                continue
            if failed:
                self(study, storage.get_trial(trial._trial_id))
        found, self._found = self._found, []
        return found

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._found.append(LostTrial(trial, self.retry(study, trial)))

    def retry(self, study: optuna.Study, trial: FrozenTrial) -> int | None:
        """Queue the (failed) trial again with its parameters; the retry's number, or None
        when it was retried `max_retries` times already. Call under the study's lock."""
        history = [*trial.system_attrs.get(RETRY_HISTORY_ATTR, []), trial.number]
        if len(history) > self.max_retries:
            return None
        attrs = {key: value for key, value in trial.system_attrs.items() if key != HEARTBEAT_ATTR}
        attrs.update({FAILED_TRIAL_ATTR: history[0], RETRY_HISTORY_ATTR: history})
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=trial.user_attrs,
                system_attrs=attrs,
            )
        )
        return max(t.number for t in study.get_trials(deepcopy=False))


def retried_as(number: int | None) -> str:
    """What became of a failed trial, for logs and its run's tag."""
    if number is None:
        return "not retried (hydra.sweeper.max_retries used up)"
    return f"retried as trial {number}"


def last_beat(trial: FrozenTrial) -> float:
    """The wall time of a running trial's last fer_lab heartbeat (its start before any)."""
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is not None:
        return float(beat)
    start = trial.datetime_start
    return start.timestamp() if start else time.time()


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """The numbers of the trials a retry replaced: they do not count towards `n_trials`."""
    return {
        trial.system_attrs[RETRY_HISTORY_ATTR][-1]
        for trial in trials
        if trial.system_attrs.get(RETRY_HISTORY_ATTR)
    }


def counted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The study's trials as `n_trials` counts them: each retried trial once (its retry)."""
    replaced = retried_numbers(trials)
    return [trial for trial in trials if trial.number not in replaced]
