"""Optuna sweeps through `-m hparams_search=optuna`: resume, pruning, failures, parallel trials."""

import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from fer_lab.sweeps.search_space import parse_search_space

from .helpers import run_train

TINY = [
    "hparams_search=optuna",
    "model=convnet0",
    "dataset=synthetic",
    "dataset.train_per_class=30",
    "dataset.val_per_class=8",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "hydra.sweeper.study_name=tiny",
]
# Every trial below 0.99 val/acc_best after epoch 1 is pruned: all of them, at epoch 1.
PRUNE_AT_EPOCH_1 = [
    "+hydra.sweeper.pruner.lower=0.99",
    "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
    "~hydra.sweeper.pruner.n_startup_trials",
    "hydra.sweeper.pruner.n_warmup_steps=1",
]


def study(tmp_path: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    return optuna.load_study(study_name="tiny", storage=storage)


def sweep_runs(client) -> tuple:
    experiment = client.get_experiment_by_name("synthetic")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "fer_lab.sweep" in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_search_space_syntax_of_hydra_optuna_sweeper() -> None:
    space, fixed = parse_search_space(
        {
            "optimizer.lr": "tag(log, interval(1e-5, 1e-2))",
            "data.batch_size": "choice(32, 64)",
            "model.hidden": "int(interval(64, 512))",
            "trainer.max_epochs": "range(2, 11, 4)",
        },
        ["model=convnet1,convnet5", "seed=3"],
    )
    assert space["optimizer.lr"].log and space["optimizer.lr"].high == 0.01
    assert space["data.batch_size"].choices == (32, 64)
    assert (space["model.hidden"].low, space["model.hidden"].high) == (64, 512)
    assert (space["trainer.max_epochs"].low, space["trainer.max_epochs"].high) == (2, 10)
    assert space["model"].choices == ("convnet1", "convnet5")
    assert fixed == ["seed=3"]


@pytest.mark.slow
def test_sweep_records_trials_and_resumes_to_the_new_total(tmp_path: Path, mlflow_client) -> None:
    result = run_train(tmp_path, *TINY, "hydra.sweeper.n_trials=4")
    assert len(study(tmp_path).trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in study(tmp_path).trials)

    parents, children = sweep_runs(mlflow_client())
    (parent,) = parents
    # Children named by their sampled values; the sweep ends with its standings and page.
    assert all(re.fullmatch(r"(\S+=\S+ ?)+", c.info.run_name) for c in children)
    output = result.stdout + result.stderr
    assert "Leaderboard (4 runs, ranked by val/acc_best):" in output
    assert f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}" in output
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == [0, 1, 2, 3]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["optuna.trial_state"] for c in children} == {"COMPLETE"}
    assert all("test/acc" not in c.data.metrics for c in children)  # no test-set peeking
    assert parent.data.metrics["trials/complete"] == 4
    sweep_dir = tmp_path / "logs" / "sweeps" / "tiny"
    assert (sweep_dir / "best.yaml").is_file()
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == [f"trial_{i}" for i in range(4)]

    run_train(tmp_path, *TINY, "hydra.sweeper.n_trials=6")
    assert [t.number for t in study(tmp_path).trials] == list(range(6))
    parents, children = sweep_runs(mlflow_client())
    assert len(parents) == 1 and len(children) == 6
    assert len(list(sweep_dir.glob("trial_*"))) == 6
    client = mlflow_client()
    local = client.download_artifacts(parents[0].info.run_id, "leaderboard", str(tmp_path))
    table = pd.read_csv(Path(local) / "leaderboard.csv")
    assert len(table) == 6 and set(table["status"]) == {"COMPLETE"}
    assert list(table["epochs"]) == [2] * 6
    assert list(table["val/acc_best"]) == sorted(table["val/acc_best"], reverse=True)
    assert table["test/acc"].isna().all()  # sweeps select on val only


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic"])  # in other processes: tests/test_slurm.py
def test_pruner_stops_hopeless_trials_early(tmp_path: Path, mlflow_client, launcher: str) -> None:
    run_train(
        tmp_path,
        *TINY,
        f"hydra/launcher={launcher}",
        "trainer.max_epochs=4",
        "hydra.sweeper.n_trials=2",
        *PRUNE_AT_EPOCH_1,
    )
    trials = study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(max(t.intermediate_values) == 1 for t in trials)  # epoch 1 of 0..3
    _, children = sweep_runs(mlflow_client())
    for child in children:
        assert child.data.tags["optuna.trial_state"] == "PRUNED"
        assert child.info.status == "KILLED"
        history = mlflow_client().get_metric_history(child.info.run_id, "val/acc")
        assert len(history) == 2


@pytest.mark.slow
def test_a_failing_trial_does_not_stop_the_sweep(tmp_path: Path) -> None:
    run_train(
        tmp_path,
        *TINY,
        "logger=csv",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
        "~hydra.sweeper.sampler.n_startup_trials",
        "~hydra.sweeper.sampler.constant_liar",
        "optimizer.lr=0.001",
        "data.batch_size=choice(16,0)",
    )
    trials = study(tmp_path).trials
    assert len(trials) == 4
    for trial in trials:
        expected = TrialState.FAIL if trial.params["data.batch_size"] == 0 else TrialState.COMPLETE
        assert trial.state == expected
    assert {t.state for t in trials} == {TrialState.FAIL, TrialState.COMPLETE}
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    assert "batch_size" in failed.user_attrs["error"]


@pytest.mark.slow
def test_joblib_launcher_runs_trials_at_the_same_time(tmp_path: Path, mlflow_client) -> None:
    run_train(
        tmp_path,
        *TINY,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        # Trials of several seconds, so that start-up skew between the workers cannot hide
        # the overlap.
        "model=nouri",
        "dataset.train_per_class=300",
        "trainer.max_epochs=3",
    )
    assert [t.state for t in study(tmp_path).trials] == [TrialState.COMPLETE] * 2
    _, children = sweep_runs(mlflow_client())
    first, second = sorted(children, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time


@pytest.mark.slow
def test_searched_models_keep_their_own_keys_and_null_keys_are_searchable(tmp_path: Path) -> None:
    """`model=choice(convnet0,convnet5)` with the default `model.dropout`: convnet0, which has
    no dropout, trains without it instead of failing the sweep; `loss.max_class_weight`, null
    in the config, is searched."""
    run_train(
        tmp_path,
        *TINY,
        "hydra.sweeper.n_trials=4",
        "trainer.max_epochs=1",
        "model=choice(convnet0,convnet5)",
        "loss.max_class_weight=interval(1.0,3.0)",
    )
    trials = study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    models = set()
    for trial in trials:
        saved = tmp_path / "logs/sweeps/tiny" / f"trial_{trial.number}/.hydra/overrides.yaml"
        overrides = saved.read_text()
        assert "loss.max_class_weight=" in overrides
        assert 1.0 <= trial.params["loss.max_class_weight"] <= 3.0
        has_dropout = "model.dropout=" in overrides
        assert has_dropout == (trial.params["model"] == "convnet5")
        models.add(trial.params["model"])
    assert models == {"convnet0", "convnet5"}
