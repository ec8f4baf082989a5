"""experiments/gpu_studies.py: the plan is every study at its full recipe; a budget stops the
jobs, the same command goes on where they stopped; and the whole sequence runs end to end on
the CPU with tiny settings, into a store the results table reads."""

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from .helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "experiments" / "gpu_studies.py"
SPEC = importlib.util.spec_from_file_location("gpu_studies", SCRIPT)
gpu_studies = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_studies)


def manifest_jobs(out: Path) -> dict[str, dict]:
    return {job["name"]: job for job in json.loads((out / "manifest.json").read_text())["jobs"]}


def composed(command: str) -> DictConfig:
    """The config a planned `python -m fer_lab.train` command trains, with Hydra's choices."""
    words = command.split()
    assert words[:3] == ["python", "-m", "fer_lab.train"]
    overrides = [w for w in words[3:] if not w.startswith("hydra.")]
    with initialize_config_module("fer_lab.conf", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def choice(cfg: DictConfig, group: str) -> str:
    return cfg.hydra.runtime.choices[group]


def test_the_plan_is_every_study_at_its_recipe(tmp_path: Path) -> None:
    fer2013 = tmp_path / "fer2013.csv.gz"
    fer2013.touch()
    out = tmp_path / "out"
    argv = ["--out", str(out), "--workdir", str(tmp_path / "work"), "--fer2013", str(fer2013)]
    argv += ["--gpu-check", "--dry-run"]
    assert gpu_studies.main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "python experiments/gpu_studies.py " + " ".join(argv)
    assert manifest["status"] == "planned"
    jobs = manifest_jobs(out)
    assert next(iter(jobs)) == "gpu-check"
    check = jobs["gpu-check"]["command"]
    assert check.startswith("python -m fer_lab.gpu_check --device cuda --budget-s 240")
    assert f"--fer2013 {fer2013}" in check
    trained = {
        name: composed(job["command"]) for name, job in jobs.items() if job["kind"] == "train"
    }
    assert len(trained) == 12
    seed003 = {name: cfg for name, cfg in trained.items() if cfg.experiment_tag == "seed003"}
    assert {choice(cfg, "model") for cfg in seed003.values()} == {f"convnet{i}" for i in range(6)}
    assert all(cfg.trainer.max_epochs == 200 for cfg in seed003.values())
    variants = {
        name: (choice(cfg, "model"), choice(cfg, "loss"), choice(cfg, "augmentation"))
        for name, cfg in seed003.items()
    }
    assert variants["seed003-model6"] == ("convnet5", "mse_onehot", "hflip")
    assert variants["seed003-convnet1-cross_entropy"] == ("convnet1", "cross_entropy", "none")
    assert variants["seed003-convnet5-cross_entropy"] == ("convnet5", "cross_entropy", "none")
    assert variants["seed003-convnet2"] == ("convnet2", "mse_onehot", "none")
    best = {name: cfg for name, cfg in trained.items() if cfg.experiment_tag == "fer_lab_best"}
    assert sorted(cfg.seed for cfg in best.values()) == [1, 2, 3]
    assert all(cfg.trainer.max_epochs == 100 for cfg in best.values())
    for cfg in trained.values():
        assert cfg.trainer.accelerator == "gpu" and cfg.dataset.path == str(fer2013)
    tencrops = [job for job in jobs.values() if job["kind"] == "eval"]
    assert [job["name"] for job in tencrops] == [f"{name}-tencrop" for name in best]
    assert all("tta=tencrop" in job["command"] for job in tencrops)


STUB = """
import json, os, signal, sqlite3, sys, time
from pathlib import Path

mode, folder = sys.argv[-2], Path(sys.argv[-1])  # after an eval's ckpt_path
folder.mkdir(parents=True, exist_ok=True)

def state(status):
    (folder / "run_state.json").write_text(json.dumps({"status": status, "mlflow_run_id": "r"}))

def stop(signum, frame):
    state("stopped")
    sys.exit(143)

signal.signal(signal.SIGTERM, stop)
state("running")
if mode == "fail":
    print("the stub's error")
    sys.exit(3)
while mode == "wait" and not (folder / "go").exists():
    time.sleep(0.05)
store = os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")
with sqlite3.connect(store) as db:
    db.execute("INSERT INTO runs VALUES (?)", (folder.name,))
state("finished")
"""


def stub_jobs(workdir: Path) -> list:
    def job(name: str, mode: str, scores: str | None = None) -> object:
        kind = "eval" if scores else "train"
        folder = workdir / "runs" / name
        return gpu_studies.Job(name, kind, "stub_job", [mode, str(folder)], folder, scores)

    return [
        job("quick", "ok"),
        job("waits", "wait"),
        job("after-waits", "ok", scores="waits"),
        job("breaks", "fail"),
        job("after-breaks", "ok", scores="breaks"),
        job("later", "ok"),
    ]


def run_stubs(tmp_path: Path, budget_s: float) -> int:
    out = tmp_path / "out"
    argv = ["--out", str(out), "--workdir", str(tmp_path / "work"), "--tiny", "--jobs", "2"]
    argv += ["--budget-s", str(budget_s)]
    argv += ["--stop-grace-s", "1", "--min-start-s", "0", "--snapshot-s", "0.5"]
    args = gpu_studies.arguments(argv)
    jobs = stub_jobs(args.workdir)
    best = jobs[1].folder / "checkpoints" / "epoch000.ckpt"  # what the eval of "waits" scores
    best.parent.mkdir(parents=True, exist_ok=True)
    best.touch()
    return gpu_studies.Studies(jobs, args, probe=lambda: {"hardware": "stub"}).run()


def test_a_budget_stops_the_jobs_and_the_same_command_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stub_job.py").write_text(textwrap.dedent(STUB))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    workdir, out = tmp_path / "work", tmp_path / "out"
    workdir.mkdir()
    with sqlite3.connect(workdir / "mlflow.db") as db:
        db.execute("CREATE TABLE runs (name TEXT)")

    assert run_stubs(tmp_path, budget_s=3) == 1  # a job failed
    jobs = manifest_jobs(out)
    assert {name: job["status"] for name, job in jobs.items()} == {
        "quick": "finished",
        "waits": "stopped",  # by the budget, from its run folder it can go on
        "after-waits": "not started",
        "breaks": "failed",
        "after-breaks": "skipped",
        "later": "finished",
    }
    assert jobs["breaks"]["exit_code"] == 3 and "the stub's error" in jobs["breaks"]["output_tail"]
    assert jobs["waits"]["exit_code"] == 143 and jobs["quick"]["mlflow_run_id"] == "r"
    assert json.loads((out / "manifest.json").read_text())["hardware"] == "stub"
    with sqlite3.connect(out / "mlflow.db") as copy:  # the store as the jobs left it
        assert sorted(row[0] for row in copy.execute("SELECT name FROM runs")) == [
            "later",
            "quick",
        ]
    assert not (out / "mlflow.db-wal").exists()

    (workdir / "runs" / "waits" / "go").touch()
    (workdir / "mlflow.db").unlink()  # a fresh machine: the store comes back from --out
    assert run_stubs(tmp_path, budget_s=30) == 1  # "breaks" still fails
    again = manifest_jobs(out)
    assert [a["status"] for a in again["quick"]["attempts"]] == ["finished"]  # not rerun
    assert [a["status"] for a in again["waits"]["attempts"]] == ["stopped", "finished"]
    assert again["after-waits"]["status"] == "finished"
    assert "ckpt_path=" in again["after-waits"]["command"]
    with sqlite3.connect(out / "mlflow.db") as copy:
        names = sorted(row[0] for row in copy.execute("SELECT name FROM runs"))
    assert names == ["after-waits", "later", "quick", "waits"]


@pytest.mark.slow
def test_the_tiny_sequence_runs_end_to_end_into_a_store_the_table_reads(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--workdir", str(tmp_path / "work")]
    command += ["--tiny", "--jobs", "2"]
    command += ["--only", "fer_lab_best-*", "--seeds", "1", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["hardware"].startswith("CPU")
    jobs = {job["name"]: job for job in manifest["jobs"]}
    assert list(jobs) == [
        "fer_lab_best-seed1",
        "fer_lab_best-seed1-tencrop",
        "fer_lab_best-seed2",
        "fer_lab_best-seed2-tencrop",
    ]
    assert all(job["exit_code"] == 0 and job["wall_s"] > 0 for job in jobs.values())
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "mlflow.db"]  # no artifacts

    table = [sys.executable, str(REPO_ROOT / "experiments" / "results_table.py")]
    table += ["--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"]
    printed = subprocess.run(table, env=env, capture_output=True, text=True, check=True).stdout
    (row,) = [line for line in printed.splitlines() if line.startswith("| fer_lab_best")]
    assert "2 seeds: 1, 2;" in row and "ten-crop" in row and "CPU" in row
    for job in ("fer_lab_best-seed1", "fer_lab_best-seed2"):
        assert f"`{jobs[job]['mlflow_run_id']}`" in row
