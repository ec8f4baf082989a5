"""`make ui` in a real browser: a 2-model grid trained into a temporary store, the server that
`make ui` starts (its command read from the Makefile), and the link it prints loaded in
headless Chromium. The runs table must show both runs ranked by val/acc_best, the key metric
columns, and the grid's parent run, whose leaderboard is among its artifacts.

Needs Debian's `chromium` (.ci/run installs it); nothing is downloaded while testing.
"""

import contextlib
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fer_lab.tracking.ui_view import KEY_METRICS

from .auth_server import free_port
from .helpers import REPO_ROOT, run_train

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install)"),
]
GRID = [
    "model=convnet0,cntk_simple",
    "dataset=synthetic",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "dataset.train_per_class=20",
    "dataset.val_per_class=5",
    "dataset.test_per_class=2",
    "data.batch_size=16",
    "data.num_workers=0",
]


def make_ui_command(store: str, port: int) -> list[str]:
    """`make ui`'s recipe from the Makefile, on `store` and `port`, run by this Python."""
    lines = (REPO_ROOT / "Makefile").read_text().splitlines()
    target = next(index for index, line in enumerate(lines) if line.startswith("ui:"))
    recipe = shlex.split(lines[target + 1])
    assert recipe[:3] == ["$(BIN)/python", "-m", "fer_lab.tracking.ui_view"], recipe
    for option, value in (("--backend-store-uri", store), ("--port", str(port))):
        recipe[recipe.index(option) + 1] = value
    return [sys.executable, *recipe[1:]]


@contextlib.contextmanager
def make_ui_server(store: str, folder: Path) -> Iterator[dict[str, str]]:
    """`make ui`'s server on a free port until the block ends; yields the links it printed,
    by experiment name."""
    port, log_path = free_port(), folder / "ui.log"
    # The runs table needs no job runner; without it the server starts in half the time.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log_path.open("w") as log:
        server = subprocess.Popen(
            make_ui_command(store, port),
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its uvicorn worker in its group, stopped with it
        )
    try:
        deadline = time.monotonic() + 120
        while not healthy(f"http://127.0.0.1:{port}/health"):
            assert server.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        printed = [line.strip().partition(": ") for line in log_path.read_text().splitlines()]
        yield {name: link for name, _, link in printed if link.startswith("http://")}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def healthy(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
        return response.status == 200
    return False


def rendered_dom(url: str, folder: Path) -> str:
    """The page's DOM once its scripts have run, from headless Chromium with its own profile
    and nothing fetched but the page (no updates, sync or other background requests)."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # the tests run as root in CI
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={folder / 'chromium'}",
        "--window-size=1600,1000",  # wide enough that the grid renders every metric column
        "--virtual-time-budget=15000",  # ms of page time; paused while requests are pending
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@dataclass
class Row:
    index: int
    cells: dict[str, str] = field(default_factory=dict)  # col-id -> the cell's text


class RunsTable(HTMLParser):
    """The runs table (an AG Grid) from the DOM: its header's column ids and its rows by run
    id, a row's cells gathered from the grid's pinned and scrolled parts."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.columns: list[str] = []
        self.rows: dict[str, Row] = {}
        self._divs: list[tuple[str | None, str | None]] = []  # (row id, cell col-id) per div
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "div":  # rows and cells are divs; counting only divs skips void elements
            return
        attributes = dict(attrs)
        row_id, column = attributes.get("row-id"), attributes.get("col-id")
        role = attributes.get("role")
        if role == "row" and row_id is not None:
            self.rows.setdefault(row_id, Row(int(attributes["row-index"])))
        elif role == "columnheader" and column is not None:
            self.columns.append(column)
        self._divs.append((row_id, column if role == "gridcell" else None))

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._divs:
            self._divs.pop()

    def handle_data(self, data: str) -> None:
        row_id = next((r for r, _ in reversed(self._divs) if r is not None), None)
        column = next((c for _, c in reversed(self._divs) if c is not None), None)
        if row_id is not None and column is not None:
            cells = self.rows[row_id].cells
            cells[column] = cells.get(column, "") + data

    def in_order(self) -> list[tuple[str, Row]]:
        return sorted(self.rows.items(), key=lambda item: item[1].index)


def metric_cell(row: Row, metric: str) -> float:
    text = row.cells[f"metrics.`{metric}`"].strip()
    return math.nan if text == "-" else float(text)


def test_make_ui_link_shows_the_grid_ranked_with_its_key_metrics(
    tmp_path: Path, mlflow_client
) -> None:
    run_train(tmp_path, *GRID, multirun=True)
    client = mlflow_client()
    experiment = client.get_experiment_by_name("synthetic")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if "fer_lab.sweep" in run.data.tags]
    children = [run for run in runs if run is not parent]
    assert sorted(run.data.tags["model"] for run in children) == ["cntk_simple", "convnet0"]
    assert "leaderboard" in {item.path for item in client.list_artifacts(parent.info.run_id)}

    with make_ui_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path) as links:
        link = links[experiment.name]
        assert f"/#/experiments/{experiment.experiment_id}/runs?" in link
        assert "workflowType=machine_learning" in link  # not the GenAI view
        table = RunsTable(rendered_dom(link, tmp_path))

    for metric in KEY_METRICS:
        assert f"metrics.`{metric}`" in table.columns, table.columns
    shown = table.in_order()
    assert {run_id for run_id, _ in shown} == {run.info.run_id for run in runs}
    by_id = {run.info.run_id: run for run in children}
    ranked = [(by_id[run_id], row) for run_id, row in shown if run_id in by_id]
    for run, row in ranked:
        assert run.info.run_name in row.cells["attributes.`Run Name`"]
        for metric in KEY_METRICS:
            assert metric_cell(row, metric) == pytest.approx(run.data.metrics[metric], rel=1e-6)
    # Ranked by val/acc_best, not in the table's default order (newest first).
    shown_best = [metric_cell(row, "val/acc_best") for _, row in ranked]
    assert shown_best == sorted(shown_best, reverse=True)
    parent_row = table.rows[parent.info.run_id]
    assert parent.info.run_name in parent_row.cells["attributes.`Run Name`"]
    assert math.isnan(metric_cell(parent_row, "val/acc_best"))
