"""`python -m fer_lab.train` end to end on synthetic faces, read back from the MLflow store."""

import csv
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from fer_lab.tracking.run_identity import PARENT_RUN_ENV

from .helpers import REPO_ROOT, fault, run_cli, run_train

pytestmark = pytest.mark.slow

SMALL = [
    "dataset=synthetic",
    "dataset.train_per_class=40",
    "dataset.val_per_class=10",
    "dataset.test_per_class=10",
    "data.batch_size=32",
    "data.num_workers=0",
]


def artifact_paths(client, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_training_run_is_tracked_in_mlflow(tmp_path: Path, mlflow_client) -> None:
    result = run_train(
        tmp_path, "model=tf_emotion_cnn", "trainer.max_epochs=2", "augmentation=hflip", *SMALL
    )
    assert "Tip:" not in result.stdout + result.stderr  # Lightning's litlogger advertisement
    client = mlflow_client()
    experiment = client.get_experiment_by_name("synthetic")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("tf_emotion_cnn trainer.max_epochs=2")
    assert run.data.tags["model"] == "tf_emotion_cnn"
    assert run.data.tags["dataset"] == "synthetic"
    assert "trainer.max_epochs=2" in run.data.tags["hydra_overrides"]

    params = run.data.params
    assert params["model/params_total"] == params["model/params_trainable"] == "2380679"
    assert params["optimizer/lr"] == "0.001"
    assert params["model/num_classes"] == "7"
    assert "HorizontalFlip" in params["augmentation/train"]

    metrics = run.data.metrics
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "val/f1_macro"):
        history = client.get_metric_history(run.info.run_id, name)
        assert len(history) == 2, name
    for name in ("test/loss", "test/acc", "test/f1_macro", "test/f1/happy", "test/recall/sad"):
        assert name in metrics
    best = max(m.value for m in client.get_metric_history(run.info.run_id, "val/acc"))
    assert metrics["val/acc_best"] == pytest.approx(best)

    artifacts = artifact_paths(client, run.info.run_id)
    for split in ("val_best", "test"):
        assert f"confusion_matrices/confusion_matrix_{split}.png" in artifacts
        assert f"confusion_matrices/confusion_matrix_{split}.csv" in artifacts
    assert "config.yaml" in artifacts
    assert any(a.startswith("checkpoints/") and a.endswith(".ckpt") for a in artifacts)
    for figure in ("learning_curves", "class_histogram", "misclassified_val_best"):
        assert f"figures/{figure}.png" in artifacts
        assert f"figures/{figure}.csv" in artifacts

    local = Path(client.download_artifacts(run.info.run_id, "confusion_matrices", str(tmp_path)))
    with open(local / "confusion_matrix_test.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    counts = [[int(v) for v in row[1:]] for row in rows[1:]]
    assert sum(map(sum, counts)) == 70
    assert [sum(r) for r in counts] == [10] * 7
    diagonal = sum(counts[i][i] for i in range(7))
    assert diagonal / 70 == pytest.approx(metrics["test/acc"], abs=1e-6)

    figures = Path(client.download_artifacts(run.info.run_id, "figures", str(tmp_path)))
    with open(figures / "learning_curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in curves] == [0, 1]
    val_acc = [m.value for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert [float(row["val/acc"]) for row in curves] == pytest.approx(val_acc)
    with open(figures / "class_histogram.csv") as f:
        histogram = list(csv.DictReader(f))
    assert [(r["train"], r["val"], r["test"]) for r in histogram] == [("40", "10", "10")] * 7
    with open(local / "confusion_matrix_val_best.csv") as f:
        val_counts = [[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]]
    errors = {(t, p): n for t, row in enumerate(val_counts) for p, n in enumerate(row) if t != p}
    true, predicted = max(errors, key=errors.get)
    with open(figures / "misclassified_val_best.csv") as f:
        shown = list(csv.DictReader(f))
    assert len(shown) == min(16, errors[true, predicted])  # the best weights, all of val
    classes = rows[0][1:]
    assert {(r["true"], r["predicted"]) for r in shown} == {(classes[true], classes[predicted])}
    assert all(float(r["p_predicted"]) >= float(r["p_true"]) for r in shown)


def test_short_run_learns_the_synthetic_faces(tmp_path: Path) -> None:
    run_train(
        tmp_path,
        "model=nouri",
        "dataset=synthetic",
        "dataset.train_per_class=200",
        "dataset.val_per_class=30",
        "dataset.test_per_class=10",
        "data.num_workers=0",
        "data.batch_size=32",
        "trainer.max_epochs=5",
        "test=false",
        "logger=csv",
    )
    metrics = next(tmp_path.glob("logs/train/runs/*/csv/version_0/metrics.csv"))
    with open(metrics) as f:
        best = max(float(row["val/acc_best"]) for row in csv.DictReader(f) if row["val/acc_best"])
    assert best > 0.45, f"val/acc_best={best:.3f}; chance is 1/7"


def test_multirun_runs_are_grouped_under_a_parent(tmp_path: Path, mlflow_client) -> None:
    result = run_train(
        tmp_path, "model=convnet0,cntk_simple", "trainer=debug", *SMALL, multirun=True
    )
    client = mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    (parent,) = [r for r in runs if "fer_lab.sweep" in r.data.tags]
    jobs = [r for r in runs if r is not parent]
    assert sorted(r.data.tags["model"] for r in jobs) == ["cntk_simple", "convnet0"]
    # Children named by what differs between them; what they share is on the parent.
    assert sorted(r.info.run_name for r in jobs) == ["cntk_simple", "convnet0"]
    shared = parent.data.tags["fer_lab.shared_overrides"]
    assert "trainer=debug" in shared and "dataset=synthetic" in shared and "model=" not in shared
    assert "Leaderboard (2 runs, ranked by val/acc_best):" in result.stdout + result.stderr
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    # The grid's leaderboard on the parent run: a row per job, best val/acc_best first.
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "leaderboard")}
    assert files == {
        f"leaderboard/{name}"
        for name in ("leaderboard.csv", "leaderboard.md", "ranking.png", "val_curves.png")
    }
    local = Path(client.download_artifacts(parent.info.run_id, "leaderboard", str(tmp_path)))
    table = pd.read_csv(local / "leaderboard.csv")
    assert sorted(table["model"]) == ["cntk_simple", "convnet0"]
    assert list(table["val/acc_best"]) == sorted(table["val/acc_best"], reverse=True)
    assert set(table["status"]) == {"FINISHED"} and set(table["epochs"]) == {1}
    assert table["params"].gt(0).all() and table["wall_s"].gt(0).all()
    assert table["test/acc"].between(0, 1).all()
    printed = subprocess.run(
        [sys.executable, "-m", "fer_lab.tracking.leaderboard", "--parent", parent.info.run_id],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    rows = [line for line in printed.stdout.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and "%" in rows[0]


def test_a_stopped_grid_closes_its_parent_run_with_the_jobs_that_ran(
    tmp_path: Path, mlflow_client
) -> None:
    """SIGTERM in the first job: the grid never reaches on_multirun_end, yet its parent run
    ends KILLED (not RUNNING for ever) with that job on its leaderboard."""
    result = run_cli(
        tmp_path,
        "model=convnet0,cntk_simple",
        "trainer=debug",
        *SMALL,
        *fault("SendSignal", tmp_path, name="TERM", epoch=0, batch=1),
        multirun=True,
    )
    assert result.returncode == 143, result.stderr[-3000:]
    client = mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    (parent,) = [r for r in runs if "fer_lab.sweep" in r.data.tags]
    (job,) = [r for r in runs if r is not parent]
    assert (parent.info.status, job.info.status) == ("KILLED", "KILLED")
    local = client.download_artifacts(parent.info.run_id, "leaderboard", str(tmp_path))
    (row,) = pd.read_csv(Path(local) / "leaderboard.csv").to_dict("records")
    assert (row["model"], row["status"]) == ("convnet0", "KILLED")


def test_a_child_run_updates_its_parents_leaderboard_when_it_ends(
    tmp_path: Path, mlflow_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a grid job or trial does on any machine, before the grid or sweep itself ends."""
    client = mlflow_client()
    experiment = client.create_experiment("synthetic")
    parent = client.create_run(experiment, run_name="sweep elsewhere").info.run_id
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    run_train(tmp_path, "model=convnet0", "trainer=debug", *SMALL)
    local = client.download_artifacts(parent, "leaderboard", str(tmp_path))
    (row,) = pd.read_csv(Path(local) / "leaderboard.csv").to_dict("records")
    assert row["model"] == "convnet0" and row["status"] == "FINISHED"
    assert "ranking.png" in {
        Path(a.path).name for a in client.list_artifacts(parent, "leaderboard")
    }


def test_csv_logger_keeps_metrics_and_confusion_matrices_locally(tmp_path: Path) -> None:
    run_train(tmp_path, "model=convnet0", "trainer=debug", "logger=csv", *SMALL)
    (output,) = tmp_path.glob("logs/train/runs/*")
    assert (output / "artifacts" / "confusion_matrix_test.csv").is_file()
    assert (output / "artifacts" / "confusion_matrix_val_best.png").is_file()
    for figure in ("learning_curves", "class_histogram"):
        assert (output / "artifacts" / f"{figure}.png").is_file()
        assert (output / "artifacts" / f"{figure}.csv").is_file()
    with open(next(output.glob("csv/version_0/metrics.csv"))) as f:
        assert "val/acc_best" in next(csv.reader(f))
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_data_path_exits_2_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fer_lab.train", f"dataset.path={tmp_path}/missing.csv"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "kaggle competitions download" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_wheel_ships_the_configs_and_trains_outside_the_repo(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert "would be ignored" not in build.stdout + build.stderr  # every package declared
    (wheel,) = (tmp_path / "dist").glob("fer_lab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fer_lab/conf/train.yaml" in names
    assert "fer_lab/conf/model/dachapally.yaml" in names
    assert "fer_lab/data/on_device/batch_transform.py" in names
    assert "hydra_plugins/fer_lab_optuna/sweeper.py" in names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import fer_lab; print(fer_lab.__file__)"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(site))
    run = subprocess.run(
        [sys.executable, "-m", "fer_lab.train", "trainer=debug", "logger=csv", *SMALL],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert list(workdir.glob("logs/train/runs/*/checkpoints/last.ckpt"))


def test_every_optimizer_scheduler_augmentation_preprocess_and_loss_runs(tmp_path: Path) -> None:
    grids = [
        ("optimizer=adamw,sgd", "scheduler=cosine,plateau,onecycle"),
        ("augmentation=keras_seed002,strong", "preprocess=minmax,standardize"),
        ("loss=cross_entropy_weighted,mse_onehot", "loss.label_smoothing=0.1"),
    ]
    for grid in grids:
        result = run_train(
            tmp_path, "model=convnet0", "trainer=debug", "logger=csv", *SMALL, *grid, multirun=True
        )
        assert "Traceback" not in result.stderr
    jobs = list(tmp_path.glob("logs/train/multiruns/*/*/csv/version_0/metrics.csv"))
    assert len(jobs) == 6 + 4 + 2
