"""The results table of experiments/README.md: the study runs' leaderboard with the seeds' numbers.

    python experiments/results_table.py                      # print this store's rows
    python experiments/results_table.py --write              # merge them into the README
    python experiments/results_table.py --write --drop RUN_ID ...   # and remove rows

Every run started with `experiment=<study>` carries the tag `experiment`; each finished one is
a row, read through fer_lab's leaderboard (`python -m fer_lab.tracking.leaderboard --tag
experiment=<study>` ranks the same runs), with the seed's published number beside fer_lab's
and the command that made it. `--write` replaces the rows of this store's runs and keeps the
README's rows of runs it does not hold (made on another machine), so the table grows across
stores; `--drop` removes rows by MLflow run id (a run its study's recipe run supersedes).
"""

import argparse
import datetime
import os
import re
import shlex
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

from fer_lab.tracking.leaderboard import Entry, entry_of

README = Path(__file__).with_name("README.md")
START, END = "<!-- results:start -->", "<!-- results:end -->"

# What each seed document reports, by (study, model); the metric fer_lab compares it with.
PUBLISHED: dict[tuple[str, str], str] = {
    ("seed000", "cntk_simple"): "71.47% (28.53% error)",
    ("seed000", "dachapally"): "74.39% (25.61% error)",
    ("seed000", "dachapally_wide"): "77.65% (22.35% error)",
    ("seed001", "tf_emotion_cnn"): "val loss ~0.80",
    ("seed002", "vgg16_transfer"): "84%",
    ("seed003", "convnet0"): "45.8%",
    ("seed003", "convnet1"): "61.4%",
    ("seed003", "convnet2"): "59.1%",
    ("seed003", "convnet3"): "59.2%",
    ("seed003", "convnet4"): "57.3%",
    ("seed003", "convnet5"): "61.2% (61.3% with mirroring)",
    ("seed004", "nouri"): "~57% after 15 epochs",
    ("fer_lab_best", "fer_vgg"): "target >= 73%",
}
COLUMNS = (
    "study: model",
    "seed reports",
    "fer_lab measured",
    "command",
    "protocol (train / select / report)",
    "epochs",
    "hardware",
    "wall",
    "date",
    "MLflow run",
)
RUN_ID = re.compile(r"`([0-9a-f]{32})`")


def measured(client: MlflowClient, run: Run, entry: Entry) -> str:
    metrics = run.data.metrics
    accuracy = f"{100 * entry.test_acc:.2f}% (val best {100 * entry.val_acc_best:.2f}%)"
    if run.data.tags.get("experiment") == "seed001":
        losses = client.get_metric_history(run.info.run_id, "val/loss")
        loss = f"val loss {losses[-1].value:.3f}" if losses else "-"
        return f"{loss}; test acc {accuracy}" if "test/acc" in metrics else loss
    if "test/acc" not in metrics:
        return "-"
    if "eval/test/tencrop/acc" in metrics:  # python -m fer_lab.eval ... tta=tencrop
        accuracy += f"; ten-crop {100 * metrics['eval/test/tencrop/acc']:.2f}%"
    return accuracy


def command(run: Run) -> str:
    """The training command, with the dataset's path cut to its file name (machines differ)."""
    overrides = shlex.split(run.data.tags.get("hydra_overrides", ""))
    shown = [
        f"dataset.path=.../{Path(o.split('=', 1)[1]).name}" if o.startswith("dataset.path=") else o
        for o in overrides
    ]
    return "`python -m fer_lab.train " + " ".join(shown) + "`"


def row(client: MlflowClient, run: Run) -> list[str]:
    tags, info = run.data.tags, run.info
    entry = entry_of(client, run)
    study = tags.get("experiment", "?")
    protocol = " / ".join(tags.get(f"protocol.{k}", "?") for k in ("train", "select", "report"))
    if tags.get("protocol.selects_on_test") == "true":
        protocol += " (selects on test)"
    day = datetime.datetime.fromtimestamp(info.start_time / 1000, datetime.UTC).date()
    return [
        f"{study}: {entry.model}",
        PUBLISHED.get((study, entry.model), "-"),
        measured(client, run, entry),
        command(run),
        protocol,
        str(entry.epochs),
        tags.get("hardware", "?"),
        f"{entry.wall_s / 60:.1f} min",
        day.isoformat(),
        f"`{info.run_id}`",
    ]


def study_runs(client: MlflowClient) -> list[Run]:
    """Every finished run with a study tag (the demo aside), oldest first."""
    return [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs(
            [experiment.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
        )
        if run.data.tags.get("experiment") and run.data.tags["experiment"] != "demo"
    ]


def rows(client: MlflowClient) -> list[str]:
    return ["| " + " | ".join(row(client, run)) + " |" for run in study_runs(client)]


def merged(old_table: str, new_rows: list[str], drop: set[str]) -> str:
    """The header, then the old rows whose runs are neither re-measured nor dropped, then the
    new rows, each group sorted by study."""
    new_ids = {_run_id(line) for line in new_rows}
    kept = [
        line
        for line in old_table.splitlines()[2:]
        if line.startswith("|") and _run_id(line) not in new_ids | drop
    ]
    body = sorted(kept + [line for line in new_rows if _run_id(line) not in drop], key=_study)
    return "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS), *body])


def _run_id(line: str) -> str | None:
    found = RUN_ID.findall(line)
    return found[-1] if found else None


def _study(line: str) -> tuple[bool, str]:
    """Seed studies first, in seed order, then fer_lab's own recipes."""
    study = line.strip("| ").split(":", 1)[0]
    return not study.startswith("seed"), study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--write", action="store_true", help=f"merge the rows into {README}")
    parser.add_argument("--drop", nargs="+", default=[], metavar="RUN_ID", help="rows to remove")
    args = parser.parse_args()
    client = MlflowClient(args.tracking_uri or "sqlite:///mlflow.db")
    new_rows = rows(client)
    if not args.write:
        print("\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]))
        print("\n".join(new_rows))
        return
    text = README.read_text()
    pattern = re.compile(f"{re.escape(START)}\n(.*){re.escape(END)}", re.DOTALL)
    found = pattern.search(text)
    if found is None:
        raise SystemExit(f"{README}: no {START} ... {END} block to write the table into")
    table = merged(found.group(1), new_rows, set(args.drop))
    README.write_text(text[: found.start()] + f"{START}\n{table}\n{END}" + text[found.end() :])


if __name__ == "__main__":
    main()
