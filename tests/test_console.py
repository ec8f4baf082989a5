"""What a newcomer sees: `make demo`'s output holds no warning or advice line a user cannot act
on, and ends with where the run's results are."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fer_lab.training.summary import end_of_run, network_table

from .helpers import REPO_ROOT

# Lines of warnings and of advice (Lightning's "Set a lower value ...", "HINT: ...").
NOISE = re.compile(r"warning|deprecat|set a lower value|hint:|consider |recommend", re.IGNORECASE)


@pytest.mark.slow
def test_the_demo_is_quiet_and_ends_with_where_its_results_are(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"PYTHONPATH": str(REPO_ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "fer_lab.train", "experiment=demo", "trainer.max_epochs=1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    lines = [line for line in re.split(r"[\r\n]", output) if line.strip()]
    assert [line for line in lines if NOISE.search(line)] == []
    summary = output[output.index("Trained and tested in") :]
    assert "best epoch 1 of 1, val/acc_best 0." in summary
    assert re.search(r"Test \(best checkpoint\): acc 0\.\d{4}, macro-F1 0\.\d{4}", summary)
    checkpoint = re.search(r"Best checkpoint: (\S+\.ckpt)", summary).group(1)
    assert Path(checkpoint).is_file() and Path(checkpoint).is_relative_to(tmp_path)
    assert "make ui, then open:" in summary
    assert re.search(r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}", summary)
    assert "Test metric" not in output  # Lightning's table of 16-digit floats is gone
    assert "MaxMetric" not in output and "FLOPs" not in output  # the network, not the module


def test_the_summary_says_how_to_open_each_kind_of_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = {"experiment": "fer2013", "run_name": "nouri", "experiment_id": "3", "run_id": "ab"}
    server = end_of_run({}, None, 1, 75, "out", None, {**run, "tracking_uri": "https://m.lab/"})
    assert "open:" in server and "https://m.lab/#/experiments/3/runs/ab" in server
    assert "Trained and tested in 1m15s: val/acc_best n/a" in server
    local = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert "make ui, then open:" in end_of_run(
        {}, 2, 3, 1, "out", None, {**run, "tracking_uri": local}
    )
    elsewhere = end_of_run({}, 2, 3, 1, "out", None, {**run, "tracking_uri": "sqlite:////x/m.db"})
    assert "--backend-store-uri sqlite:////x/m.db" in elsewhere


def test_the_network_table_lists_layers_with_parameters() -> None:
    from torch import nn

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Sequential(nn.Linear(4, 2), nn.ReLU()))
    table = network_table(net, depth=2).splitlines()
    assert table[0] == "Sequential: 50 parameters"
    assert [line.split()[0] for line in table[1:]] == ["0", "2", "2.0"]  # no ReLU rows
