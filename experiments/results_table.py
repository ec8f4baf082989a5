"""The results table of experiments/README.md: the study runs' leaderboard with the seeds' numbers.

    python experiments/results_table.py                      # print this store's rows
    python experiments/results_table.py --write              # merge them into the README
    python experiments/results_table.py --write --drop RUN_ID ...   # and remove rows

Every run started with `experiment=<study>` carries the tag `experiment`; each finished one is
a row, read through fer_lab's leaderboard (`python -m fer_lab.tracking.leaderboard --tag
experiment=<study>` ranks the same runs), with the seed's published number beside fer_lab's
and the command that made it. Runs of one command that differ only in `seed=` share a row: the
mean and sample standard deviation of their accuracies, with the seeds and the range. `--write`
replaces the rows of this store's runs and keeps the README's rows of runs it does not hold
(made on another machine), so the table grows across stores; `--drop` leaves runs out by MLflow
run id (a run its study's recipe run supersedes).
"""

import argparse
import datetime
import os
import re
import shlex
import statistics
from collections.abc import Iterable
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
    ("fer_lab_best_v2", "fer_vgg"): "target >= 73%",
}
# Runs whose command changes what the seed did, by (study, override): the seed's own number for
# that variant, or what the seed's number was measured with.
VARIANTS: dict[tuple[str, str], str] = {
    ("seed003", "augmentation=hflip"): "61.3% (model 6: mirrored images)",
    ("seed003", "loss=cross_entropy"): "{} with the seed's MSE loss",
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
TENCROP = "eval/test/tencrop/acc"


def overrides_of(run: Run) -> list[str]:
    return shlex.split(run.data.tags.get("hydra_overrides", ""))


def published(study: str, model: str, overrides: Iterable[str]) -> str:
    """The seed's number for this run's study, model and variant."""
    number = PUBLISHED.get((study, model), "-")
    for override in overrides:
        variant = VARIANTS.get((study, override))
        if variant is not None:
            return variant.format(number)
    return number


def measured(client: MlflowClient, run: Run, entry: Entry) -> str:
    metrics = run.data.metrics
    accuracy = f"{100 * entry.test_acc:.2f}% (val best {100 * entry.val_acc_best:.2f}%)"
    if run.data.tags.get("experiment") == "seed001":
        losses = client.get_metric_history(run.info.run_id, "val/loss")
        loss = f"val loss {losses[-1].value:.3f}" if losses else "-"
        return f"{loss}; test acc {accuracy}" if "test/acc" in metrics else loss
    if "test/acc" not in metrics:
        return "-"
    if TENCROP in metrics:  # python -m fer_lab.eval ... tta=tencrop
        accuracy += f"; ten-crop {100 * metrics[TENCROP]:.2f}%"
    return accuracy


def shown_overrides(run: Run) -> list[str]:
    """The run's overrides, with the dataset's path cut to its file name (machines differ)."""
    return [
        f"dataset.path=.../{Path(o.split('=', 1)[1]).name}" if o.startswith("dataset.path=") else o
        for o in overrides_of(run)
    ]


def command(run: Run, seeds: list[str] | None = None) -> str:
    """The training command; for a row of several seeds, the multirun that makes them all."""
    shown = shown_overrides(run)
    if seeds is None:
        return "`python -m fer_lab.train " + " ".join(shown) + "`"
    shown = [o for o in shown if not _is_seed(o)] + ["seed=" + ",".join(seeds)]
    return "`python -m fer_lab.train -m " + " ".join(shown) + "`"


def _is_seed(override: str) -> bool:
    return override.lstrip("+").split("=", 1)[0] == "seed"


def row(client: MlflowClient, run: Run) -> list[str]:
    tags, info = run.data.tags, run.info
    entry = entry_of(client, run)
    study = tags.get("experiment", "?")
    return [
        f"{study}: {entry.model}",
        published(study, entry.model, overrides_of(run)),
        measured(client, run, entry),
        command(run),
        protocol(run),
        str(entry.epochs),
        tags.get("hardware", "?"),
        f"{entry.wall_s / 60:.1f} min",
        _day(run).isoformat(),
        f"`{info.run_id}`",
    ]


def seeds_row(client: MlflowClient, runs: list[Run]) -> list[str]:
    """One row for runs of one command that differ only in their seed: the mean and sample
    standard deviation of each accuracy, the seeds and the range; wall time per run."""
    runs = sorted(runs, key=_seed_order)
    entries = [entry_of(client, run) for run in runs]
    seeds = [run.data.params.get("seed", "?") for run in runs]
    first, study, model = runs[0], runs[0].data.tags.get("experiment", "?"), entries[0].model

    def spread(values: list[float]) -> str:
        mean, std = statistics.mean(values), statistics.stdev(values)
        return f"{100 * mean:.2f}% ± {100 * std:.2f}"

    tests = [e.test_acc for e in entries]
    shown = f"{spread(tests)} (mean ± std of {len(runs)} seeds: {', '.join(seeds)}; "
    shown += f"{100 * min(tests):.2f}-{100 * max(tests):.2f}%); "
    shown += f"val best {spread([e.val_acc_best for e in entries])}"
    tencrops = [run.data.metrics[TENCROP] for run in runs if TENCROP in run.data.metrics]
    if len(tencrops) == len(runs):
        shown += f"; ten-crop {spread(tencrops)}"
    epochs = sorted({e.epochs for e in entries})
    hardware = sorted({run.data.tags.get("hardware", "?") for run in runs})
    wall = statistics.mean(e.wall_s for e in entries) / 60
    return [
        f"{study}: {model}",
        published(study, model, overrides_of(first)),
        shown,
        command(first, seeds),
        protocol(first),
        str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}",
        ", ".join(hardware),
        f"{wall:.1f} min each (mean)",
        max(_day(run) for run in runs).isoformat(),
        " ".join(f"`{run.info.run_id}`" for run in runs),
    ]


def _seed_order(run: Run) -> tuple[int, str]:
    seed = run.data.params.get("seed", "")
    return (int(seed), "") if seed.lstrip("-").isdigit() else (0, seed)


def protocol(run: Run) -> str:
    tags = run.data.tags
    shown = " / ".join(tags.get(f"protocol.{k}", "?") for k in ("train", "select", "report"))
    if tags.get("protocol.selects_on_test") == "true":
        shown += " (selects on test)"
    return shown


def _day(run: Run) -> datetime.date:
    return datetime.datetime.fromtimestamp(run.info.start_time / 1000, datetime.UTC).date()


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


def by_command(runs: list[Run]) -> list[list[Run]]:
    """The runs grouped by study and command minus `seed=`, in the order their first run came;
    only runs with a test accuracy join others (seed001's rows show a loss)."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        if "test/acc" in run.data.metrics and run.data.tags.get("experiment") != "seed001":
            unseeded = sorted(o for o in shown_overrides(run) if not _is_seed(o))
            key = (run.data.tags["experiment"], *unseeded)
        else:
            key = (run.info.run_id,)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def rows(client: MlflowClient, leave_out: Iterable[str] = ()) -> list[str]:
    """This store's rows; runs named in `leave_out` are not shown, nor counted in a mean."""
    left_out = set(leave_out)
    runs = [run for run in study_runs(client) if run.info.run_id not in left_out]
    cells = [
        row(client, group[0]) if len(group) == 1 else seeds_row(client, group)
        for group in by_command(runs)
    ]
    return ["| " + " | ".join(line) + " |" for line in cells]


def merged(old_table: str, new_rows: list[str], drop: set[str]) -> str:
    """The header, then the old rows none of whose runs is re-measured or dropped, then the
    new rows, each group sorted by study."""
    new_ids = set().union(*(_run_ids(line) for line in new_rows))
    kept = [
        line
        for line in old_table.splitlines()[2:]
        if line.startswith("|") and not _run_ids(line) & (new_ids | drop)
    ]
    body = sorted(kept + [line for line in new_rows if not _run_ids(line) & drop], key=_study)
    return "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS), *body])


def _run_ids(line: str) -> set[str]:
    """The MLflow runs of a row: those in its last cell."""
    return set(RUN_ID.findall(line.rstrip(" |").rsplit("|", 1)[-1]))


def _study(line: str) -> tuple[bool, str]:
    """Seed studies first, in seed order, then fer_lab's own recipes."""
    study = line.strip("| ").split(":", 1)[0]
    return not study.startswith("seed"), study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--write", action="store_true", help=f"merge the rows into {README}")
    parser.add_argument("--drop", nargs="+", default=[], metavar="RUN_ID", help="runs to leave out")
    args = parser.parse_args()
    client = MlflowClient(args.tracking_uri or "sqlite:///mlflow.db")
    new_rows = rows(client, leave_out=args.drop)
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
