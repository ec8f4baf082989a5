"""Trials per hour of an Optuna sweep with several trials at once on one device, as a
researcher would launch it (`hydra/launcher=joblib`, one process per trial)."""

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from fer_lab.sweeps.storage import open_storage


def trials_per_hour(
    overrides: list[str], model: str, epochs: int, concurrent: int, workdir: Path
) -> dict[str, Any]:
    """Run `concurrent` trials of `model` for `epochs` epochs side by side (pruning off, so
    every trial trains its full length) and time the whole sweep, start-up included."""
    study = f"bench-{model}-{concurrent}-at-once"
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
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={concurrent}",
        f"hydra.sweeper.n_jobs={concurrent}",
        f"hydra.sweeper.n_trials={concurrent}",
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
            f"sweep with {concurrent} trials at once failed (exit {done.returncode}):\n"
            + done.stderr[-3000:]
        )
    trials = optuna.load_study(study_name=study, storage=open_storage(str(storage))).trials
    states = [trial.state.name for trial in trials]
    if states != ["COMPLETE"] * concurrent:
        raise RuntimeError(f"sweep with {concurrent} trials at once ended with trials {states}")
    return {
        "model": model,
        "epochs": epochs,
        "concurrent": concurrent,
        "trials": concurrent,
        "wall_s": wall,
        "trials_per_hour": concurrent * 3600 / wall,
    }
