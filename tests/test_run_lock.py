"""One launch per run folder: the lock, and how the ranks of one launch know each other."""

from pathlib import Path

import pytest

from fer_lab.training import run_lock
from fer_lab.training.run_lock import LAUNCH_ENV, RunInUseError, claimed, launch_id


def test_a_held_run_folder_refuses_a_second_claim_until_released(tmp_path: Path) -> None:
    held = pytest.raises(RunInUseError, match="is being trained by process")
    with claimed(tmp_path), held, claimed(tmp_path):
        pass
    with claimed(tmp_path):  # released when the first job ended
        assert '"pid"' in (tmp_path / run_lock.LOCK_FILE).read_text()


def test_ranks_of_one_launch_share_its_id_and_stale_ids_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("SLURM_NTASKS", "SLURM_STEP_ID", "TORCHELASTIC_RUN_ID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(LAUNCH_ENV, "left-by-another-process")
    fresh = launch_id()  # this node's rank zero: a new id, for the ranks it starts
    assert fresh != "left-by-another-process"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_id() == fresh  # a rank that rank zero started
    monkeypatch.setenv(LAUNCH_ENV, "left-by-another-process")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_ID", "61")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert launch_id() == "slurm-61.0"  # every task of the step, whatever it inherited
