"""The results table of experiments/README.md, read from the MLflow runs of the studies.

    python experiments/results_table.py                 # print the table
    python experiments/results_table.py --write         # replace it in experiments/README.md

Every run started with `experiment=<study>` carries the tag `experiment`; the table lists
each finished one with the seed's published number beside fer_lab's measured one.
"""

import argparse
import datetime
import os
import re
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

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
    "study (run name)",
    "seed reports",
    "fer_lab measured",
    "protocol (train / select / report)",
    "epochs",
    "hardware",
    "wall",
    "date",
    "MLflow run",
)


def measured(client: MlflowClient, run: Run) -> str:
    metrics = run.data.metrics
    if run.data.tags.get("experiment") == "seed001":
        losses = client.get_metric_history(run.info.run_id, "val/loss")
        return f"val loss {losses[-1].value:.3f}" if losses else "-"
    if "test/acc" not in metrics:
        return "-"
    text = f"{100 * metrics['test/acc']:.2f}% (val best {100 * metrics['val/acc_best']:.2f}%)"
    if "eval/test/tencrop/acc" in metrics:  # python -m fer_lab.eval ... tta=tencrop
        text += f"; ten-crop {100 * metrics['eval/test/tencrop/acc']:.2f}%"
    return text


def row(client: MlflowClient, run: Run) -> list[str]:
    tags, info = run.data.tags, run.info
    study, model = tags.get("experiment", "?"), tags.get("model", "?")
    protocol = " / ".join(tags.get(f"protocol.{k}", "?") for k in ("train", "select", "report"))
    if tags.get("protocol.selects_on_test") == "true":
        protocol += " (selects on test)"
    epochs = len(client.get_metric_history(info.run_id, "val/acc"))
    minutes = (info.end_time - info.start_time) / 60000 if info.end_time else float("nan")
    day = datetime.datetime.fromtimestamp(info.start_time / 1000, datetime.UTC).date()
    return [
        f"{study}: {info.run_name}",
        PUBLISHED.get((study, model), "-"),
        measured(client, run),
        protocol,
        str(epochs),
        tags.get("hardware", "?"),
        f"{minutes:.1f} min",
        day.isoformat(),
        f"`{info.run_id}`",
    ]


def table(client: MlflowClient) -> str:
    runs = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs(
            [experiment.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
        )
        if run.data.tags.get("experiment") and run.data.tags["experiment"] != "demo"
    ]
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(row(client, run)) + " |" for run in runs),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--write", action="store_true", help=f"replace the table in {README}")
    args = parser.parse_args()
    client = MlflowClient(args.tracking_uri or "sqlite:///mlflow.db")
    text = table(client)
    if not args.write:
        print(text)
        return
    pattern = re.compile(f"{re.escape(START)}.*{re.escape(END)}", re.DOTALL)
    README.write_text(pattern.sub(f"{START}\n{text}\n{END}", README.read_text()))


if __name__ == "__main__":
    main()
