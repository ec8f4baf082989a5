"""The results table lists finished study runs with the seed's number beside fer_lab's."""

import importlib.util
from pathlib import Path

from mlflow import MlflowClient

from .helpers import REPO_ROOT

SPEC = importlib.util.spec_from_file_location(
    "results_table", REPO_ROOT / "experiments" / "results_table.py"
)
results_table = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(results_table)


def make_run(client: MlflowClient, experiment_id: str, tags: dict, metrics: dict, status: str):
    run = client.create_run(experiment_id, run_name=tags["model"], tags=tags)
    for step, (name, values) in enumerate(metrics.items()):
        for epoch, value in enumerate(values):
            client.log_metric(run.info.run_id, name, value, step=epoch + step)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_table_rows_come_from_finished_study_runs(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("fer2013")
    protocol = {"protocol.train": "Training", "protocol.select": "PublicTest"}
    tags = {"experiment": "seed003", "model": "convnet1", "hardware": "CPU 2 cores", **protocol}
    tags["hydra_overrides"] = "experiment=seed003 dataset.path=/data/sets/fer2013.csv"
    tags["protocol.report"] = "PrivateTest"
    metrics = {"val/acc": [0.40, 0.45], "val/acc_best": [0.45], "test/acc": [0.4512]}
    run_id = make_run(client, experiment, tags, metrics, "FINISHED")
    make_run(client, experiment, {**tags, "model": "convnet2"}, metrics, "KILLED")
    make_run(client, experiment, {"model": "nouri"}, metrics, "FINISHED")

    lines = results_table.rows(client)
    assert len(lines) == 1  # the one finished study run
    cells = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert cells[0] == "seed003: convnet1"
    assert cells[1] == "61.4%"
    assert cells[2] == "45.12% (val best 45.00%)"
    assert cells[3] == "`python -m fer_lab.train experiment=seed003 dataset.path=.../fer2013.csv`"
    assert cells[4] == "Training / PublicTest / PrivateTest"
    assert cells[5] == "2"
    assert cells[-1] == f"`{run_id}`"


def test_writing_keeps_other_stores_rows_and_drops_named_ones() -> None:
    def line(study: str, run_id: str) -> str:
        return f"| {study}: m | - | - | `cmd` | - | 1 | cpu | 1.0 min | 2026-11-30 | `{run_id}` |"

    elsewhere, remeasured, superseded, new = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)
    old = "\n".join(["| header |", "|---|", line("fer_lab_best", elsewhere),
                     line("seed001", remeasured), line("seed000", superseded)])  # fmt: skip
    fresh = [line("seed001", remeasured).replace("1.0 min", "9.0 min"), line("seed000", new)]
    table = results_table.merged(old, fresh, drop={superseded}).splitlines()
    assert table[0].startswith("| study: model | seed reports |")
    assert table[2:] == [line("seed000", new), fresh[0], line("fer_lab_best", elsewhere)]
