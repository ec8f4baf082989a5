"""`python -m fer_lab.eval`: TTA views, metrics that agree with their files and MLflow, runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from fer_lab.core.errors import ConfigError
from fer_lab.inference.evaluate import Evaluation, evaluate
from fer_lab.inference.tta import tta_views
from fer_lab.training.resume import read_state

from .helpers import REPO_ROOT

TEST_IMAGES = 35  # the fixture's synthetic dataset: 5 per class, 7 classes, in val and test


def tracking_uri(checkpoint: Path) -> str:
    return f"sqlite:///{checkpoint.parent.parent.parent / 'mlflow.db'}"


def eval_config(checkpoint: Path, *overrides: str) -> DictConfig:
    with initialize_config_module("fer_lab.conf", version_base="1.3"):
        defaults = [f"ckpt_path={checkpoint}", f"tracking_uri={tracking_uri(checkpoint)}"]
        return compose("eval", overrides=[*defaults, "data.num_workers=0", *overrides])


def training_run_id(checkpoint: Path) -> str:
    return read_state(checkpoint.parent.parent)["mlflow_run_id"]


@pytest.fixture(scope="module")
def plain_eval(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Evaluation:
    return evaluate(eval_config(trained_checkpoint), tmp_path_factory.mktemp("eval_none"))


def test_tta_views() -> None:
    images = torch.rand(2, 1, 48, 48)
    assert tta_views(images, "none") == [images]
    original, mirror = tta_views(images, "hflip")
    assert torch.equal(original, images) and torch.equal(mirror, images.flip(-1))

    views = tta_views(images, "tencrop", scale=1.125)
    upscaled = F.interpolate(images, size=(54, 54), mode="bilinear", align_corners=False)
    assert len(views) == 10 and all(view.shape == images.shape for view in views)
    assert torch.equal(views[0], upscaled[..., :48, :48])  # top-left
    assert torch.equal(views[3], upscaled[..., 6:, 6:])  # bottom-right
    assert torch.equal(views[4], upscaled[..., 3:51, 3:51])  # centre
    assert torch.equal(views[9], views[4].flip(-1))  # centre of the mirror
    with pytest.raises(ValueError, match="fivecrop"):
        tta_views(images, "fivecrop")


def test_eval_logs_into_the_training_run(plain_eval: Evaluation, trained_checkpoint: Path) -> None:
    folder = plain_eval.files[0].parent
    matrix = pd.read_csv(folder / "confusion_matrix.csv", index_col=0).to_numpy()
    assert matrix.sum() == TEST_IMAGES
    normalised = pd.read_csv(folder / "confusion_matrix_normalised.csv", index_col=0).to_numpy()
    np.testing.assert_allclose(normalised.sum(axis=1), 1, atol=1e-3)
    per_class = pd.read_csv(folder / "per_class.csv", index_col="class")
    np.testing.assert_allclose(per_class["recall"], np.diag(normalised), atol=1e-3)
    assert per_class["support"].sum() == TEST_IMAGES
    assert "| class | precision |" in (folder / "report.md").read_text()

    assert plain_eval.run_id == training_run_id(trained_checkpoint)
    client = mlflow.MlflowClient(tracking_uri(trained_checkpoint))
    run = client.get_run(plain_eval.run_id)
    metrics = run.data.metrics
    accuracy = metrics["eval/test/none/acc"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(accuracy)
    # The same checkpoint on the same images as the training run's own test step.
    assert accuracy == pytest.approx(metrics["test/acc"])
    assert metrics["eval/test/none/f1_macro"] == pytest.approx(metrics["test/f1_macro"])
    assert metrics["eval/test/none/top2_acc"] >= accuracy
    assert {"eval/test/none/nll", "eval/test/none/recall/happy"} <= set(metrics)
    assert run.data.tags["eval/test/none/checkpoint"] == str(trained_checkpoint.resolve())
    artifacts = {item.path for item in client.list_artifacts(plain_eval.run_id, "eval/test_none")}
    expected = ["confusion_matrix.png", "confusion_matrix_normalised.png", "per_class.csv"]
    assert {f"eval/test_none/{name}" for name in expected} <= artifacts


@pytest.mark.parametrize("tta", ["hflip", "tencrop"])
def test_tta_averages_valid_probabilities(
    tta: str, plain_eval: Evaluation, trained_checkpoint: Path, tmp_path: Path
) -> None:
    result = evaluate(eval_config(trained_checkpoint, f"tta={tta}"), tmp_path)
    probabilities = result.probabilities
    assert probabilities.shape == plain_eval.probabilities.shape
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(TEST_IMAGES))
    assert not torch.allclose(probabilities, plain_eval.probabilities)
    assert torch.equal(result.labels, plain_eval.labels)
    assert 0 <= result.scores.accuracy <= result.scores.top2_accuracy <= 1
    run = mlflow.MlflowClient(tracking_uri(trained_checkpoint)).get_run(result.run_id)
    assert run.data.metrics[f"eval/test/{tta}/acc"] == pytest.approx(result.scores.accuracy)
    assert run.data.tags[f"eval/test/{tta}/tta"] == tta


def test_new_run_names_the_training_run(trained_checkpoint: Path, tmp_path: Path) -> None:
    config = eval_config(trained_checkpoint, "mlflow_run=new", "split=val", "tta=hflip")
    result = evaluate(config, tmp_path)
    training_run = training_run_id(trained_checkpoint)
    assert result.run_id != training_run
    run = mlflow.MlflowClient(tracking_uri(trained_checkpoint)).get_run(result.run_id)
    assert run.info.run_name == "eval convnet0 val hflip"
    assert run.info.status == "FINISHED"
    assert run.data.tags["training_run_id"] == training_run
    assert run.data.tags["mlflow.parentRunId"] == training_run
    assert run.data.tags["checkpoint"] == str(trained_checkpoint.resolve())
    assert run.data.params["split"] == "val" and run.data.params["tta"] == "hflip"
    assert 0 <= run.data.metrics["eval/val/hflip/acc"] <= 1
    assert result.scores.per_class["support"].sum() == TEST_IMAGES


def test_checkpoint_without_run_gets_a_new_run(trained_checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "checkpoints" / "model.ckpt"  # no run_state.json beside it
    copy.parent.mkdir(parents=True)
    shutil.copy(trained_checkpoint, copy)
    config = eval_config(copy, f"tracking_uri={tracking_uri(trained_checkpoint)}")
    result = evaluate(config, tmp_path / "out")
    run = mlflow.MlflowClient(tracking_uri(trained_checkpoint)).get_run(result.run_id)
    assert run.info.run_name == "eval convnet0 test none"
    assert "training_run_id" not in run.data.tags and "mlflow.parentRunId" not in run.data.tags


def test_dataset_config_gets_the_checkpoint_seed(
    plain_eval: Evaluation, trained_checkpoint: Path, tmp_path: Path
) -> None:
    """`dataset=` composes conf/dataset; its seeded splits must hold out the training's images."""
    sizes = ["dataset.train_per_class=20", "dataset.val_per_class=5", "dataset.test_per_class=5"]
    result = evaluate(eval_config(trained_checkpoint, "dataset=synthetic", *sizes), tmp_path)
    assert torch.equal(result.labels, plain_eval.labels)
    torch.testing.assert_close(result.probabilities, plain_eval.probabilities)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("split=train", "split='train': choose one of val, test"),
        ("tta=fivecrop", "tta='fivecrop': choose one of none, hflip, tencrop"),
        ("mlflow_run=latest", "mlflow_run='latest'"),
        ("ckpt_path=/nonexistent/model.ckpt", "no such file"),
        ("dataset=fer2013_happy_sad", "trained on 7 classes"),
    ],
)
def test_user_errors(override: str, message: str, trained_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        evaluate(eval_config(trained_checkpoint, override), tmp_path)


@pytest.mark.slow
def test_cli(trained_checkpoint: Path, tmp_path: Path) -> None:
    """A user error exits 2 with one line and no traceback; a good run prints its summary."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(trained_checkpoint),
        "PYTHONPATH": str(REPO_ROOT),
    }

    def run(*overrides: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fer_lab.eval", f"ckpt_path={trained_checkpoint}"]
        return subprocess.run(
            [*command, "data.num_workers=0", *overrides],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    bad = run("tta=bogus")
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "tta='bogus': choose one of" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr

    good = run("split=val", "tta=tencrop")
    assert good.returncode == 0, good.stderr[-3000:]
    assert "convnet0 on synthetic val, tta=tencrop: acc=" in good.stdout
    (report,) = (tmp_path / "logs" / "eval" / "runs").glob("*_val_tencrop/report.md")
    assert "tta=tencrop" in report.read_text()
