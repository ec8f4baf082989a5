"""Trials per hour of an Optuna sweep with several trials at once on one device, as a
researcher would launch it, in the two schedules fer_lab has: `batches` (hydra/launcher=joblib
with hydra.sweeper.n_jobs: a batch starts when the previous one has ended) and `workers`
(hydra.sweeper.workers: each process asks for its next trial as soon as its last ends)."""

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from fer_lab.sweeps.storage import open_storage

SCHEDULES = {
    "batches": lambda n: [
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={n}",
        f"hydra.sweeper.n_jobs={n}",
    ],
    "workers": lambda n: [f"hydra.sweeper.workers={n}"],
}


def trials_per_hour(
    overrides: list[str],
    model: str,
    epochs: int,
    concurrent: int,
    workdir: Path,
    schedule: str = "workers",
) -> dict[str, Any]:
    """Run 2 x `concurrent` trials of `model` for `epochs` epochs, `concurrent` at a time in
    `schedule` (pruning off, so every trial trains its full length), and time the whole
    sweep, start-up included."""
    trials_wanted = 2 * concurrent
    study = f"bench-{model}-{concurrent}-{schedule}"
    storage = workdir / f"{study}.journal"
    command = [
        sys.executable,
        "-m",
        "fer_lab.train",
        "-m",
        "hparams_search=optuna",
        f"model={model}",
        f"trainer.max_epochs={epochs}",
        "test=false",
        *SCHEDULES[schedule](concurrent),
        f"hydra.sweeper.n_trials={trials_wanted}",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.pruner=null",
        f"paths.log_dir={workdir}/logs",
        *overrides,
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"{schedule} sweep, {concurrent} trials at once, failed (exit {done.returncode}):\n"
            + done.stderr[-3000:]
        )
    trials = optuna.load_study(study_name=study, storage=open_storage(str(storage))).trials
    states = [trial.state.name for trial in trials]
    if states != ["COMPLETE"] * trials_wanted:
        raise RuntimeError(f"{schedule} sweep, {concurrent} at once, ended with trials {states}")
    return {
        "model": model,
        "epochs": epochs,
        "schedule": schedule,
        "concurrent": concurrent,
        "trials": trials_wanted,
        "wall_s": wall,
        "trials_per_hour": trials_wanted * 3600 / wall,
    }
