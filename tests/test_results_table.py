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
    tags["protocol.report"] = "PrivateTest"
    metrics = {"val/acc": [0.40, 0.45], "val/acc_best": [0.45], "test/acc": [0.4512]}
    run_id = make_run(client, experiment, tags, metrics, "FINISHED")
    make_run(client, experiment, {**tags, "model": "convnet2"}, metrics, "KILLED")
    make_run(client, experiment, {"model": "nouri"}, metrics, "FINISHED")

    lines = results_table.table(client).splitlines()
    assert len(lines) == 3  # header, rule, the one finished study run
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells[1] == "61.4%"
    assert cells[2] == "45.12% (val best 45.00%)"
    assert cells[3] == "Training / PublicTest / PrivateTest"
    assert cells[4] == "2"
    assert cells[-1] == f"`{run_id}`"
