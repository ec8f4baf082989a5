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


def fault(kind: str, tmp_path: Path, **params: object) -> list[str]:
    """Overrides adding a tests.faults callback that fires at epoch 1, batch 3, once."""
    args = {"epoch": 1, "batch": 3, "marker": tmp_path / "fault_fired", **params}
    node = "+callbacks.fault"
    return [f"{node}._target_=tests.faults.{kind}"] + [f"{node}.{k}={v}" for k, v in args.items()]


def run_train(
    tmp_path: Path, *overrides: str, multirun: bool = False, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`run_cli` that must succeed."""
    result = run_cli(tmp_path, *overrides, multirun=multirun, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def draw_test_face(side: int, seed: int) -> np.ndarray:
    """A grey `side` x `side` face that OpenCV's Haar frontal-face cascade finds: the cascade
    keys on shading (dark eye sockets and brows, a lit nose bridge, a dark mouth), which the
    line-drawn faces of fer_lab.data.synthetic lack often enough to be missed (~1 in 10)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    cx, eye_y = 0.5 + 0.02 * rng.uniform(-1, 1), 0.45 + 0.02 * rng.uniform(-1, 1)
    tone = 185 + 30 * rng.uniform(-1, 1)
    face = np.full((side, side), 60 + 40 * rng.uniform(), np.float32)
    face[((x - cx) / 0.42) ** 2 + ((y - 0.42) / 0.46) ** 2 < 1] = 35  # hair
    skin = ((x - cx) / 0.36) ** 2 + ((y - 0.54) / 0.46) ** 2
    face[skin < 1] = (tone - 40 * skin)[skin < 1]  # darker towards the edges

    def shade(centre_x: float, centre_y: float, width: float, height: float, value: float) -> None:
        weight = np.exp(-2 * (((x - centre_x) / width) ** 2 + ((y - centre_y) / height) ** 2))
        face[:] = face * (1 - weight) + value * weight

    for eye_x in (cx - 0.15, cx + 0.15):
        shade(eye_x, eye_y, 0.11, 0.06, tone * 0.45)  # socket
        shade(eye_x, eye_y - 0.085, 0.10, 0.02, tone * 0.3)  # brow
        shade(eye_x, eye_y, 0.035, 0.025, 30)  # iris
    shade(cx, eye_y + 0.08, 0.04, 0.12, tone * 1.1)  # nose bridge
    shade(cx, 0.66, 0.07, 0.025, tone * 0.5)  # nostrils
    shade(cx, 0.78, 0.13, 0.035, tone * 0.35)  # mouth
    face = cv2.GaussianBlur(face, (0, 0), side / 100) + rng.normal(0, 4, face.shape)
    return np.clip(face, 0, 255).astype(np.uint8)


def write_face_photo(
    path: Path, height: int, width: int, faces: list[tuple[int, int, int]], colour: bool, seed: int
) -> None:
    """A photo of `faces` ((x, y, side) each, drawn by `draw_test_face`) on a smooth background,
    in colour (skin-tinted) or grey; JPEG or PNG by the suffix."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 1, height), np.linspace(0, 1, width)).astype(np.float32)
    photo = np.stack([90 + 60 * ramp * c for c in rng.uniform(0.3, 1, 3)], axis=2)
    for i, (x, y, side) in enumerate(faces):
        photo[y : y + side, x : x + side] = draw_test_face(side, seed + i)[:, :, None]
    photo = photo * np.float32([0.78, 0.88, 1.0]) if colour else photo.mean(axis=2)  # BGR tint
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.clip(photo, 0, 255).astype(np.uint8))
