"""fer_lab.visualize: filter and feature-map PNGs of a trained checkpoint, logged to its run."""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from torch import nn

from fer_lab.core.errors import ConfigError
from fer_lab.inference.checkpoint import load_trained
from fer_lab.inference.layer_outputs import conv_layers
from fer_lab.inference.visualization import visualize

from .helpers import REPO_ROOT, write_image


def conv_count(checkpoint: Path) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in load_trained(checkpoint).net.modules())


def tracking_uri(checkpoint: Path) -> str:
    return f"sqlite:///{checkpoint.parent.parent.parent / 'mlflow.db'}"


def test_one_png_per_conv_layer_plus_filters(trained_checkpoint: Path, tmp_path: Path) -> None:
    paths = visualize(trained_checkpoint, tmp_path, max_channels=4)
    assert set(paths) == set(tmp_path.glob("*.png"))
    assert len(list(tmp_path.glob("filters_*.png"))) == 1
    assert len(list(tmp_path.glob("feature_maps_*.png"))) == conv_count(trained_checkpoint) == 3
    # forward order with module names: convnet0's layer1..layer3
    names = [p.name for p in paths]
    assert names[1:] == [f"feature_maps_0{i}_layer{i}.0.png" for i in (1, 2, 3)]
    # seven class rows: taller than the one-row picture of a photo (next test)
    assert cv2.imread(str(paths[1])).shape[0] > 500


def test_photo_of_another_size_outside_its_run(
    trained_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A colour photo of any size is resized and greyed as in training; a checkpoint copied
    away from its run folder has no run to log to, so only the files are written."""
    photo = tmp_path / "photo.jpg"
    write_image(photo, 90, 130, colour=True, seed=1)
    copy = tmp_path / "copy.ckpt"
    shutil.copy(trained_checkpoint, copy)
    with caplog.at_level(logging.INFO, logger="fer_lab.inference.visualization"):
        paths = visualize(copy, tmp_path / "out", image=photo, tracking_uri="sqlite:///unused.db")
    assert len(paths) == conv_count(copy) + 1
    assert cv2.imread(str(paths[1])).shape[0] < 500
    assert "No MLflow run recorded" in caplog.text
    assert not Path("unused.db").exists()


def test_pngs_logged_to_training_run(own_trained_checkpoint: Path, tmp_path: Path) -> None:
    """On a run of its own: the shared checkpoint's run holds what other tests logged."""
    import mlflow

    uri = tracking_uri(own_trained_checkpoint)
    paths = visualize(own_trained_checkpoint, tmp_path / "out", max_channels=2, tracking_uri=uri)
    run_id = load_trained(own_trained_checkpoint).mlflow_run_id()
    logged = mlflow.MlflowClient(uri).list_artifacts(run_id, "visualize")
    assert sorted(Path(a.path).name for a in logged) == sorted(p.name for p in paths)


def test_clear_errors(trained_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        visualize(tmp_path / "missing.ckpt", tmp_path)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a photo")
    with pytest.raises(ConfigError, match=r"image=.*notes\.jpg: not a readable image"):
        visualize(trained_checkpoint, tmp_path, image=not_an_image)
    with pytest.raises(ConfigError, match="no Conv2d layers"):
        conv_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_dataset_that_cannot_load_asks_for_image(trained_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(trained_checkpoint, map_location="cpu", weights_only=False)
    checkpoint["fer_lab_config"]["dataset"] = {
        "_target_": "fer_lab.data.fer2013.FER2013CSV",
        "name": "fer2013",
        "path": str(tmp_path / "fer2013.csv"),
        "classes": checkpoint["fer_lab_classes"],
    }
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    with pytest.raises(ConfigError, match=r"cannot load the checkpoint's dataset.*pass image="):
        visualize(moved, tmp_path)


@pytest.mark.slow
def test_cli(trained_checkpoint: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(trained_checkpoint)}
    env["PYTHONPATH"] = str(REPO_ROOT)
    photo = tmp_path / "face.png"
    write_image(photo, 64, 40, colour=False, seed=2)

    def cli(*overrides: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fer_lab.visualize", *overrides]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)

    result = cli(f"ckpt_path={trained_checkpoint}", f"image={photo}", "max_channels=3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "visualize" / "runs").iterdir()
    assert len(list(run_dir.glob("*.png"))) == conv_count(trained_checkpoint) + 1
    assert "visualize/face/" in result.stdout + result.stderr

    failed = cli(f"ckpt_path={tmp_path / 'missing.ckpt'}")
    output = failed.stdout + failed.stderr
    assert failed.returncode == 2, output
    assert "missing.ckpt: no such file" in output
    assert "Traceback" not in output
