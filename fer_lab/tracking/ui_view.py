"""Where the MLflow UI lands: the runs table of the classic "Model training" view, ranked by
`val/acc_best`, with the key metrics as columns.

MLflow 3.17's UI opens on its GenAI view unless the URL says `workflowType=machine_learning`
(the `mlflow.experimentKind` experiment tag is not read by this UI), and its runs table shows
no metric until the user picks columns. A saved view, an experiment tag the UI reads as
`mlflow.sharedViewState.<key>` and opens with `viewStateShareKey=<key>`, carries the columns
and the order; every experiment fer_lab logs to gets one.

`python -m fer_lab.tracking.ui_view` (what `make ui` runs) prints each experiment's link, then
starts `mlflow ui` with the given arguments.
"""

import json
import os
import sys
import time

from mlflow import MlflowClient

VIEW_KEY = "fer_lab"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
KEY_METRICS = ("val/acc_best", "test/acc", "val/acc", "val/loss", "train/loss")
KEY_PARAMS = ("model/params_total",)
KEY_TAGS = ("model", "dataset", "experiment", "optuna.trial_state")


def key_metrics_view() -> str:
    """The saved view's tag value: the UI's envelope around its table state."""
    columns = [f"metrics.`{m}`" for m in KEY_METRICS]
    columns += [f"params.`{p}`" for p in KEY_PARAMS] + [f"tags.`{t}`" for t in KEY_TAGS]
    state = {
        "orderByKey": "metrics.`val/acc_best`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,
    }
    now = int(time.time() * 1000)
    envelope = {"name": "fer_lab: key metrics", "createdAt": now, "state": json.dumps(state)}
    return json.dumps(envelope)


def add_key_metrics_view(client: MlflowClient, experiment_id: str) -> None:
    """Give the experiment fer_lab's saved view, unless it has one (a user's edit stays)."""
    if VIEW_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, VIEW_TAG, key_metrics_view())


def runs_table_url(base_url: str, experiment_id: str) -> str:
    """The link that opens an experiment on its runs table with the key metrics."""
    query = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def _option(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args[:-1] else default


def main(argv: list[str] | None = None) -> None:
    """Print the experiments' landing links, then replace this process with `mlflow ui`."""
    args = list(sys.argv[1:] if argv is None else argv)
    store = _option(args, "--backend-store-uri", "sqlite:///mlflow.db")
    base = f"http://{_option(args, '--host', '127.0.0.1')}:{_option(args, '--port', '5000')}"
    client = MlflowClient(store)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    print(f"MLflow UI at {base}/#/experiments?workflowType=machine_learning")
    for experiment in experiments:
        add_key_metrics_view(client, experiment.experiment_id)
        print(f"  {experiment.name}: {runs_table_url(base, experiment.experiment_id)}")
    sys.stdout.flush()
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    os.execv(mlflow, [mlflow, "ui", *args])


if __name__ == "__main__":
    main()
