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


def make_run(
    client: MlflowClient,
    experiment_id: str,
    tags: dict,
    metrics: dict,
    status: str,
    params: dict | None = None,
    minutes: float | None = None,
):
    start = 1_780_000_000_000  # 2026-05-28
    run = client.create_run(experiment_id, start_time=start, run_name=tags["model"], tags=tags)
    for step, (name, values) in enumerate(metrics.items()):
        for epoch, value in enumerate(values):
            client.log_metric(run.info.run_id, name, value, step=epoch + step)
    for name, value in (params or {}).items():
        client.log_param(run.info.run_id, name, value)
    end = None if minutes is None else start + int(minutes * 60_000)
    client.set_terminated(run.info.run_id, status, end_time=end)
    return run.info.run_id


def cells_of(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


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
    cells = cells_of(lines[0])
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


def test_seeds_of_one_command_share_a_row_with_their_mean_and_spread(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("fer2013")
    tags = {"experiment": "fer_lab_best", "model": "fer_vgg", "hardware": "NVIDIA H200 x1"}
    tags |= {"protocol.train": "Training", "protocol.select": "PublicTest"}
    tags["protocol.report"] = "PrivateTest"
    recipe = "experiment=fer_lab_best trainer=gpu dataset.path=/data/a/fer2013.csv.gz"
    seeded = []
    for seed, test, tencrop, minutes in (
        (1, 0.70, 0.71, 10),
        (2, 0.72, 0.74, 12),
        (3, 0.74, 0.74, 14),
    ):
        path = recipe if seed != 3 else recipe.replace("/data/a/", "/elsewhere/")
        metrics = {"val/acc": [0.5, 0.6 + seed / 100], "val/acc_best": [0.6 + seed / 100]}
        metrics |= {"test/acc": [test], "eval/test/tencrop/acc": [tencrop]}
        run_tags = {**tags, "hydra_overrides": f"{path} seed={seed}"}
        seeded.append(
            make_run(client, experiment, run_tags, metrics, "FINISHED", {"seed": seed}, minutes)
        )
    shorter = {**tags, "hydra_overrides": f"{recipe} trainer.max_epochs=11 seed=1"}
    metrics = {"val/acc": [0.57], "val/acc_best": [0.57], "test/acc": [0.5854]}
    single = make_run(client, experiment, shorter, metrics, "FINISHED", {"seed": 1}, 2)

    def grouped_then_alone(lines: list[str]) -> list[list[str]]:
        return sorted((cells_of(line) for line in lines), key=lambda cells: "seeds" not in cells[2])

    grouped, alone = grouped_then_alone(results_table.rows(client))
    assert grouped[0] == "fer_lab_best: fer_vgg"
    assert grouped[2] == (
        "72.00% ± 2.00 (mean ± std of 3 seeds: 1, 2, 3; 70.00-74.00%); val best 62.00% ± 1.00; "
        "ten-crop 73.00% ± 1.73"
    )
    assert grouped[3] == (
        "`python -m fer_lab.train -m experiment=fer_lab_best trainer=gpu "
        "dataset.path=.../fer2013.csv.gz seed=1,2,3`"
    )
    assert grouped[4:9] == [
        "Training / PublicTest / PrivateTest",
        "2",
        "NVIDIA H200 x1",
        "12.0 min each (mean)",
        "2026-05-28",
    ]
    assert grouped[9] == " ".join(f"`{run_id}`" for run_id in seeded)
    assert alone[2] == "58.54% (val best 57.00%)" and alone[-1] == f"`{single}`"

    # A run left out is neither shown nor counted in the mean.
    grouped, _ = grouped_then_alone(results_table.rows(client, leave_out=[seeded[2]]))
    assert grouped[2].startswith("71.00% ± 1.41 (mean ± std of 2 seeds: 1, 2; ")


def test_seed003_variants_show_the_seeds_number_for_them() -> None:
    assert results_table.published("seed003", "convnet5", ["augmentation=hflip"]).startswith(
        "61.3% (model 6"
    )
    assert (
        results_table.published("seed003", "convnet1", ["experiment=seed003", "loss=cross_entropy"])
        == "61.4% with the seed's MSE loss"
    )
    assert results_table.published("seed003", "convnet1", ["model=convnet1"]) == "61.4%"


def test_a_row_of_several_runs_is_replaced_when_any_of_them_is_remeasured() -> None:
    def line(study: str, *run_ids: str) -> str:
        ids = " ".join(f"`{run_id}`" for run_id in run_ids)
        return f"| {study}: m | - | - | `cmd` | - | 1 | cpu | 1.0 min | 2026-11-30 | {ids} |"

    a, b, c, d = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)
    old = "\n".join(["| header |", "|---|", line("fer_lab_best", a, b), line("seed003", d)])
    table = results_table.merged(old, [line("fer_lab_best", a, b, c)], drop={d}).splitlines()
    assert table[2:] == [line("fer_lab_best", a, b, c)]
