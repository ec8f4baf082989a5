"""Helpers the tests share: config composition, dataset writers in the real formats, the CLI."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from fer_lab.data.fer2013 import FER2013_CLASSES

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_FER2013 = REPO_ROOT.parent / "shared" / "data" / "fer2013.csv.gz"
USAGES = ("Training", "PublicTest", "PrivateTest")


def compose_config(*overrides: str) -> DictConfig:
    """The training config as `python -m fer_lab.train` would compose it (no Hydra run dir)."""
    with initialize_config_module("fer_lab.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def write_fer2013_csv(path: Path, per_class: dict[str, int], seed: int = 0) -> dict[str, list[int]]:
    """A Kaggle-format CSV (gzip if the name ends in .gz); returns the labels per Usage."""
    rng = np.random.default_rng(seed)
    rows = ["emotion,pixels,Usage"]
    labels: dict[str, list[int]] = {usage: [] for usage in USAGES}
    for usage, count in per_class.items():
        for code in range(len(FER2013_CLASSES)):
            for _ in range(count):
                pixels = rng.integers(0, 256, 48 * 48)
                rows.append(f"{code},{' '.join(map(str, pixels))},{usage}")
                labels[usage].append(code)
    text = "\n".join(rows) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return labels


def write_image(path: Path, height: int, width: int, colour: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if colour else (height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rng.integers(0, 256, shape, dtype=np.uint8))


def run_cli(
    tmp_path: Path, *overrides: str, multirun: bool = False, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`python -m fer_lab.train` in `tmp_path` with its own MLflow SQLite store, whatever its
    exit code; `tests.faults` callbacks can be added as overrides."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [sys.executable, "-m", "fer_lab.train", *(["-m"] if multirun else []), *overrides]
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_train(
    tmp_path: Path, *overrides: str, multirun: bool = False, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`run_cli` that must succeed."""
    result = run_cli(tmp_path, *overrides, multirun=multirun, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result
