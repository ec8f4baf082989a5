"""Leaderboards: the runs of a grid, a sweep or an experiment ranked in one table, with a chart
of the ranking and their validation curves overlaid.

A parent run (grid multirun or Optuna study) gets its leaderboard as artifacts under
`leaderboard/`, rewritten whenever a child finishes, so a running sweep shows its standings;
`python -m fer_lab.tracking.leaderboard` prints the same table for any parent run, experiment
or tag.
"""

import argparse
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fer_lab.tracking.figures import write_ranking, write_val_curves
from fer_lab.tracking.mlflow_store import prepare_tracking_store
from fer_lab.tracking.run_identity import FAILURE_REASON_TAG, SWEEP_TAG

PARENT_TAG = "mlflow.parentRunId"
RANKED_BY = "val/acc_best"


@dataclass
class Entry:
    """One run's line: what it trained and how well."""

    run_id: str
    name: str
    model: str
    status: str
    val_acc_best: float
    test_acc: float
    params: float
    epochs: int
    wall_s: float
    val_curve: list[float] = field(default_factory=list)  # val/acc per epoch
    note: str = ""  # why a run ended KILLED or FAILED


def children_of(client: MlflowClient, parent_run_id: str) -> list[Run]:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    )


def entry_of(client: MlflowClient, run: Run) -> Entry:
    metrics, tags, info = run.data.metrics, run.data.tags, run.info
    curve = [m.value for m in client.get_metric_history(info.run_id, "val/acc")]
    # One train/loss per epoch trained; validations may be fewer (check_val_every_n_epoch).
    trained = len(client.get_metric_history(info.run_id, "train/loss"))
    end_ms = info.end_time or time.time() * 1000
    # A pruned trial's run is KILLED, the tag says PRUNED; a trial whose worker died is FAIL
    # in Optuna and KILLED in MLflow (then retried): shown KILLED.
    status = tags.get("optuna.trial_state", info.status)
    if status == "FAIL" and info.status == "KILLED":
        status = "KILLED"
    return Entry(
        run_id=info.run_id,
        name=info.run_name or info.run_id,
        model=tags.get("model", "?"),
        status=status,
        val_acc_best=metrics.get(RANKED_BY, math.nan),
        test_acc=metrics.get("test/acc", math.nan),
        params=float(run.data.params.get("model/params_total", math.nan)),
        epochs=trained or len(curve),
        wall_s=round((end_ms - info.start_time) / 1000, 1),
        val_curve=curve,
        note=tags.get(FAILURE_REASON_TAG, ""),
    )


def leaderboard(client: MlflowClient, runs: list[Run]) -> list[Entry]:
    """The runs' entries, best `val/acc_best` first (runs without it last)."""
    entries = [entry_of(client, run) for run in runs]
    return sorted(entries, key=lambda e: (math.isnan(e.val_acc_best), -e.val_acc_best))


def as_table(entries: list[Entry]) -> pd.DataFrame:
    rows = [
        {
            "rank": rank,
            "run": e.name,
            "model": e.model,
            RANKED_BY: e.val_acc_best,
            "test/acc": e.test_acc,
            "params": e.params,
            "epochs": e.epochs,
            "wall_s": e.wall_s,
            "status": e.status,
            "note": e.note,
            "run_id": e.run_id,
        }
        for rank, e in enumerate(entries, 1)
    ]
    columns = ["rank", "run", "model", RANKED_BY, "test/acc", "params", "epochs", "wall_s"]
    # The columns also without rows: a sweep whose trials all failed before their runs began.
    return pd.DataFrame(rows, columns=[*columns, "status", "note", "run_id"])


def as_markdown(entries: list[Entry]) -> str:
    table = as_table(entries).drop(columns="run_id").astype(object)
    for column in (RANKED_BY, "test/acc"):
        table[column] = table[column].map(lambda v: "-" if math.isnan(v) else f"{100 * v:.2f}%")
    table["params"] = table["params"].map(lambda v: "-" if math.isnan(v) else f"{int(v):,}")
    table["note"] = table["note"].map(lambda note: note[:100].replace("|", "/"))
    lines = [list(table.columns), ["---"] * len(table.columns), *table.astype(str).values.tolist()]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def write_leaderboard(entries: list[Entry], folder: Path, title: str) -> list[Path]:
    """leaderboard.csv, leaderboard.md, ranking.png and val_curves.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    csv, markdown = folder / "leaderboard.csv", folder / "leaderboard.md"
    as_table(entries).to_csv(csv, index=False)
    markdown.write_text(f"# {title}\n\nRanked by {RANKED_BY}.\n\n{as_markdown(entries)}\n")
    ranking = write_ranking(entries, folder / "ranking", title)
    return [csv, markdown, ranking, write_val_curves(entries, folder / "val_curves", title)]


def standings(entries: list[Entry], url: str, top: int = 5) -> str:
    """What a grid or sweep prints at its end: its best runs and the parent run's page."""
    lines = [f"Leaderboard ({len(entries)} runs, ranked by {RANKED_BY}):"]
    for rank, entry in enumerate(entries[:top], 1):
        lines.append(
            f"  {rank}. {entry.name}: {RANKED_BY} {entry.val_acc_best:.4f}, "
            f"test/acc {entry.test_acc:.4f} ({entry.status})"
        )
    lines.append(f"Parent run: {url}")
    return "\n".join(lines)


def publish(client: MlflowClient, parent_run_id: str) -> list[Entry]:
    """(Re)write the leaderboard of the parent's children as the parent's artifacts; returns
    its entries."""
    entries = leaderboard(client, children_of(client, parent_run_id))
    title = client.get_run(parent_run_id).info.run_name or parent_run_id
    with tempfile.TemporaryDirectory() as tmp:
        write_leaderboard(entries, Path(tmp), title)
        client.log_artifacts(parent_run_id, tmp, "leaderboard")
    return entries


def runs_to_rank(client: MlflowClient, args: argparse.Namespace) -> tuple[list[Run], str]:
    """The runs the command line names, and a title for them."""
    if args.parent:
        return children_of(client, args.parent), client.get_run(args.parent).info.run_name
    experiments = client.search_experiments()
    if args.experiment:
        experiments = [e for e in experiments if e.name == args.experiment]
        if not experiments:
            raise LookupError(f"no MLflow experiment named {args.experiment!r}")
    filter_string = ""
    if args.tag:
        key, _, value = args.tag.partition("=")
        filter_string = f"tags.`{key}` = '{value}'"
    runs = client.search_runs([e.experiment_id for e in experiments], filter_string)
    title = " ".join(filter(None, [args.experiment, args.tag])) or "all runs"
    return [run for run in runs if SWEEP_TAG not in run.data.tags], title


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fer_lab.tracking.leaderboard",
        description="Rank MLflow runs by val/acc_best: a grid's or sweep's children, an "
        "experiment's runs, or the runs with a tag (e.g. --tag experiment=seed004).",
    )
    parser.add_argument("--parent", help="a grid or sweep parent run id")
    parser.add_argument("--experiment", help="an MLflow experiment name (e.g. fer2013)")
    parser.add_argument("--tag", help="KEY=VALUE, e.g. experiment=seed004")
    parser.add_argument("--write", type=Path, help="also write the CSV, Markdown and PNGs here")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="default: MLFLOW_TRACKING_URI, else ./mlflow.db",
    )
    args = parser.parse_args(argv)
    if args.parent and (args.experiment or args.tag):
        parser.error("--parent names the runs alone; leave out --experiment and --tag")
    prepare_tracking_store(args.tracking_uri)
    client = MlflowClient(args.tracking_uri)
    try:
        runs, title = runs_to_rank(client, args)
    except (LookupError, MlflowException) as error:
        parser.error(str(error))
    entries = leaderboard(client, runs)
    print(f"{title}: {len(entries)} runs, ranked by {RANKED_BY}\n\n{as_markdown(entries)}")
    if args.write:
        for path in write_leaderboard(entries, args.write, title):
            print(path)


if __name__ == "__main__":
    main()
