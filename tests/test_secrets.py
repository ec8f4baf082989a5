"""Passwords in URLs stay out of everything fer_lab writes: logs, MLflow, saved configs,
checkpoints, best.yaml."""

import logging
from pathlib import Path

import pytest

from fer_lab.core.secrets import mask_log_record, mask_secrets, masked

from .helpers import run_train
from .test_sweeps import TINY


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://fer:s3cret@db:5432/optuna", "postgresql://fer:***@db:5432/optuna"),
        ("mysql+pymysql://a:p%40ss:w@h/d", "mysql+pymysql://a:***@h/d"),
        ("http://user:pw@127.0.0.1:5000", "http://user:***@127.0.0.1:5000"),
        (
            "storage=postgresql://u:x@h/a and http://v:y@h",
            "storage=postgresql://u:***@h/a and http://v:***@h",
        ),
        ("postgresql://fer@db/optuna", "postgresql://fer@db/optuna"),  # no password
        ("http://127.0.0.1:5000/path", "http://127.0.0.1:5000/path"),
        ("sqlite:////tmp/a:b@c.db", "sqlite:////tmp/a:b@c.db"),  # a path, not credentials
        ("lr=0.001", "lr=0.001"),
    ],
)
def test_url_passwords_are_masked(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


def test_masked_walks_containers() -> None:
    value = {"a": ["postgresql://u:pw@h/d", 3], "b": ("http://x:y@h",), "c": None}
    assert masked(value) == {
        "a": ["postgresql://u:***@h/d", 3],
        "b": ("http://x:***@h",),
        "c": None,
    }


def test_log_records_are_masked() -> None:
    url = ("postgresql://u:pw@h/d",)
    record = mask_log_record(logging.LogRecord("x", logging.INFO, "f", 1, "at %s", url, None))
    assert record.getMessage() == "at postgresql://u:***@h/d"


@pytest.mark.slow
def test_a_password_on_the_command_line_is_written_nowhere(tmp_path: Path, mlflow_client) -> None:
    """A sweep with a password in a typed value: no file it leaves (configs Hydra saves, logs,
    checkpoints, the MLflow and Optuna stores, best.yaml) and no output line holds it."""
    secret = "hunter2-not-for-logs"
    result = run_train(
        tmp_path,
        *TINY,
        "hydra.sweeper.n_trials=2",
        "trainer.max_epochs=1",
        f"+notes=postgresql://fer:{secret}@db.example/optuna",
    )
    assert secret not in result.stdout + result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "best.yaml" for p in written)
    assert any(p.suffix == ".ckpt" for p in written)
    assert [str(p) for p in written if secret.encode() in p.read_bytes()] == []
    runs = mlflow_client().search_runs(
        [e.experiment_id for e in mlflow_client().search_experiments()]
    )
    assert len(runs) == 3  # the study's parent and two trials
    for run in runs:
        assert secret not in str(run.data.params) + str(run.data.tags) + run.info.run_name
    notes = [run.data.params["notes"] for run in runs if "notes" in run.data.params]
    assert notes == ["postgresql://fer:***@db.example/optuna"] * 2  # each trial, masked


def test_storage_url_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    monkeypatch.setenv("FER_LAB_OPTUNA_STORAGE", "postgresql://u:pw@h/db")
    with initialize_config_module("fer_lab.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    node = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    assert node["storage"].startswith("${oc.env:FER_LAB_OPTUNA_STORAGE,")


def test_credentials_from_the_environment_are_masked_as_typed_and_as_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import base64

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sweeper")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "correct-horse-battery")
    monkeypatch.setenv("PGPASSWORD", "pg-secret-1")
    header = base64.b64encode(b"sweeper:correct-horse-battery").decode()
    text = f"login correct-horse-battery, Authorization: Basic {header}, db pg-secret-1"
    assert mask_secrets(text) == "login ***, Authorization: Basic ***, db ***"
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert mask_secrets("correct-horse-battery") == "correct-horse-battery"  # not a secret now
