"""Fixtures: small datasets written in the real formats, and an MLflow client per test."""

from collections.abc import Callable
from pathlib import Path

import pytest

from fer_lab.data.fer2013 import FER2013_CLASSES

from .helpers import write_image


@pytest.fixture
def fer2013_folder(tmp_path: Path) -> Path:
    """train/ and test/ with capitalised class folders of 48x48 JPEGs (10 and 3 per class)."""
    root = tmp_path / "fer2013"
    for split, count in (("train", 10), ("test", 3)):
        for c, name in enumerate(FER2013_CLASSES):
            for i in range(count):
                path = root / split / name.capitalize() / f"{i}.jpg"
                write_image(path, 48, 48, False, c * 100 + i)
    return root


@pytest.fixture
def legend_dataset(tmp_path: Path) -> Path:
    """Seed 002's layout: legend.csv (user.id,image,emotion, mixed-case labels) and photos of
    several sizes, colour and grey, beside it."""
    labels = ["anger", "HAPPINESS", "Neutral ", "sadness", "surprise"]
    lines = ["user.id,image,emotion"]
    for i in range(60):
        name = f"img_{i}.{'png' if i % 3 else 'jpg'}"
        write_image(tmp_path / "images" / name, 60 + 7 * (i % 5), 50 + 11 * (i % 4), i % 2 == 0, i)
        lines.append(f"user{i % 4},images/{name},{labels[i % len(labels)]}")
    csv_path = tmp_path / "legend.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


@pytest.fixture
def mlflow_client(tmp_path: Path) -> Callable:
    def client():
        import mlflow

        return mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    return client
