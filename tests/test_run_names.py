"""Child runs named by what differs between them; what they share goes on the parent."""

import pytest

from fer_lab.tracking.run_names import (
    SWEPT_KEYS_ENV,
    child_name,
    publish_swept_keys,
    shared_overrides,
    swept_keys,
)

GRID = ["model=tf_emotion_cnn,cntk_simple,nouri", "dataset=synthetic", "trainer.max_epochs=1"]


def test_a_grid_sweeps_its_comma_lists_and_shares_the_rest() -> None:
    command = [*GRID, "optimizer.lr=range(0.001,0.01,0.003)", "+x=[1,2]", "y='a,b'"]
    swept = swept_keys(command)
    assert swept == ["model", "optimizer.lr"]  # a list or a quoted comma is one value
    assert shared_overrides(command, swept) == [
        "dataset=synthetic",
        "trainer.max_epochs=1",
        "+x=[1,2]",
        "y='a,b'",
    ]
    assert swept_keys(["model=nouri"], ["optimizer.lr", "data.batch_size"]) == [
        "optimizer.lr",
        "data.batch_size",
    ]


def test_children_are_named_by_their_swept_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SWEPT_KEYS_ENV, raising=False)
    job = ["model=nouri", "dataset=synthetic", "trainer.max_epochs=1"]
    assert child_name(job) is None  # not in a sweeping multirun
    publish_swept_keys(swept_keys(GRID))
    assert child_name(job) == "nouri"
    trial = ["optimizer.lr=0.003", "data.batch_size=64", "model.dropout=0.2", "dataset=synthetic"]
    space = ["optimizer.lr", "data.batch_size", "model.dropout"]
    monkeypatch.delenv(SWEPT_KEYS_ENV)
    assert child_name(trial, space) == "lr=0.003 batch_size=64 dropout=0.2"
    publish_swept_keys(["augmentation"])
    assert child_name(["augmentation=strong", "model=nouri"]) == "augmentation=strong"
