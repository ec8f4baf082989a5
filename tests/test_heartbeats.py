"""Dead trials told from live ones without training: fer_lab's heartbeat on a journal file,
Optuna's on SQLite; a dead trial is failed, retried with its parameters and counted once."""

import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from fer_lab.sweeps.heartbeats import (
    HEARTBEAT_ATTR,
    KeepAlive,
    LostTrials,
    counted_trials,
    record_heartbeat,
)
from fer_lab.sweeps.storage import open_storage

SPACE = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}


def new_study(tmp_path: Path, kind: str, lost: LostTrials) -> optuna.Study:
    spec = str(tmp_path / "optuna.journal") if kind == "journal" else f"sqlite:///{tmp_path}/o.db"
    storage = open_storage(spec, heartbeat_interval=1, grace_period=2, on_lost=lost)
    return optuna.create_study(study_name="beats", storage=storage)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_silent_trial_is_failed_and_retried_once_a_beating_one_lives(
    tmp_path: Path, kind: str
) -> None:
    lost = LostTrials(grace_period=2, max_retries=1)
    study = new_study(tmp_path, kind, lost)
    silent, beating = study.ask(SPACE), study.ask(SPACE)
    for trial in (silent, beating):
        record_heartbeat(study._storage, trial._trial_id)
    time.sleep(3)  # past the grace period (SQLite's heartbeats carry the database's clock)
    record_heartbeat(study._storage, beating._trial_id)
    (found,) = lost.fail_dead(study)
    assert found.trial.number == silent.number and found.retry_number == 2
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    retry = trials[2]
    assert retry.params == trials[0].params
    assert retry.system_attrs["retry_history"] == [0] and retry.system_attrs["failed_trial"] == 0
    assert HEARTBEAT_ATTR not in retry.system_attrs  # it starts with a fresh heartbeat
    assert [t.number for t in counted_trials(trials)] == [1, 2]
    assert study.ask(SPACE).number == 2  # the retry goes first, with its parameters
    assert lost.fail_dead(study) == []


def last_beaten(study: optuna.Study, trial_id: int, seconds_ago: float) -> None:
    study._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time() - seconds_ago)


def test_a_trial_that_died_again_is_not_retried_past_max_retries(tmp_path: Path) -> None:
    lost = LostTrials(grace_period=2, max_retries=1)
    study = new_study(tmp_path, "journal", lost)
    last_beaten(study, study.ask(SPACE)._trial_id, seconds_ago=10)
    (died,) = lost.fail_dead(study)
    retry = study.ask(SPACE)
    assert retry.number == died.retry_number
    last_beaten(study, retry._trial_id, seconds_ago=10)
    (died_again,) = lost.fail_dead(study)
    assert died_again.retry_number is None
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert [t.number for t in counted_trials(trials)] == [1]  # one trial, failed for good


def test_keep_alive_beats_until_the_trial_finishes(tmp_path: Path) -> None:
    study = new_study(tmp_path, "journal", LostTrials(2, 1))
    trial = study.ask(SPACE)
    last_beaten(study, trial._trial_id, seconds_ago=10)
    with KeepAlive(study._storage, [trial._trial_id], interval_s=0.1) as heartbeat:
        beat = study._storage.get_trial(trial._trial_id).system_attrs[HEARTBEAT_ATTR]
        assert time.time() - beat < 10  # beaten on entry
        study.tell(trial, 0.5)
        deadline = time.monotonic() + 30
        while heartbeat.trial_ids and time.monotonic() < deadline:
            time.sleep(0.1)
        assert heartbeat.trial_ids == []  # dropped once finished
    assert study.get_trials()[0].state == TrialState.COMPLETE
