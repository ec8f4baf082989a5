"""The GPU path without a GPU: tensors on a stand-in accelerator (tests/accelerator.py) cross
every device boundary fer_lab has, and the training step is shown to make no host sync."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from fer_lab.core.errors import ConfigError
from fer_lab.inference.checkpoint import inference_device, load_trained
from fer_lab.inference.tta import predict_proba
from fer_lab.training.checkpoint_io import TRUST_ENV
from fer_lab.training.metrics import IMAGES, LOSS, TrainingTally
from fer_lab.training.misclassified import find_misclassified, net_from_checkpoint
from fer_lab.training.module import FERLitModule
from fer_lab.training.stopping import NonFiniteLossError

from .accelerator import OnAccelerator, host_syncs, module_to_accelerator, to_accelerator
from .helpers import REPO_ROOT, compose_config, run_cli

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def test_the_stand_in_fails_where_a_gpu_fails() -> None:
    """The guard rails the other tests rely on."""
    on_gpu = to_accelerator(torch.arange(4))
    with pytest.raises(RuntimeError, match="same device"):
        on_gpu == torch.arange(4)  # noqa: B015
    with pytest.raises(TypeError, match="numpy"):
        on_gpu.numpy()
    assert type(on_gpu.cpu()) is torch.Tensor and type(on_gpu + 1) is OnAccelerator
    with host_syncs() as syncs:
        bool(on_gpu.sum() > 0)
        torch.tensor([1.0])
    assert syncs == ["__bool__", "tensor(python data)"]


def training_module(model: str = "convnet0") -> FERLitModule:
    cfg = compose_config("dataset=synthetic", f"model={model}")
    return FERLitModule(
        net=instantiate(cfg.model),
        loss=instantiate(cfg.loss, class_counts=[1] * len(CLASSES)),
        optimizer=instantiate(cfg.optimizer),
        scheduler=None,
        class_names=CLASSES,
    )


def test_training_step_makes_no_host_sync() -> None:
    """Loss, metrics and the non-finite guard stay on the device; reading the tally (at the
    logging interval and the epoch's end) is one sync."""
    module = module_to_accelerator(training_module())
    optimizer = module.configure_optimizers()["optimizer"]
    module.tally = TrainingTally(next(module.net.parameters()))
    batch = to_accelerator((torch.randn(8, 1, 48, 48), torch.randint(0, 7, (8,))))
    per_step = []
    for batch_idx in range(3):
        with host_syncs() as syncs:
            loss = module.training_step(batch, batch_idx)
        per_step.append(syncs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert per_step == [[], [], []]
    assert isinstance(module.tally.state, OnAccelerator)
    with host_syncs() as syncs:
        values = module.tally.state.tolist()
    assert syncs == ["tolist"] and values[IMAGES] == 24


def test_the_tally_means_are_per_image() -> None:
    tally = TrainingTally(torch.zeros(()))
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    tally.add(torch.tensor(1.0), logits[:2], torch.tensor([0, 0]), None)
    tally.add(torch.tensor(3.0), logits, torch.tensor([0, 1, 1]), torch.tensor(0.5))
    means = tally.means(tally.state.tolist())
    assert means == pytest.approx({"train/loss": 11 / 5, "train/acc": 3 / 5, "train/reg_loss": 0.3})
    tally.start_epoch()
    assert tally.state[LOSS] == 0 and tally.state[IMAGES] == 0


def test_nonfinite_loss_is_reported_with_its_first_step() -> None:
    tally = TrainingTally(torch.zeros(()), first_step=10)
    logits, labels = torch.zeros(2, 7), torch.zeros(2, dtype=torch.long)
    module = training_module()
    module.tally = tally
    module._check_finite(tally.state.tolist())  # nothing observed yet
    for value in [0.5, 0.4, float("inf"), float("nan"), 0.3]:
        tally.add(torch.tensor(value), logits, labels, None)
    with pytest.raises(
        NonFiniteLossError, match=r"train/loss is inf at epoch 0, step 12 \(batch 2"
    ):
        module._check_finite(tally.state.tolist())


class ByBrightness(nn.Module):
    """Logits from the mean pixel: a known answer for each image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        return torch.stack([-mean, mean], dim=1) * 10


def test_misclassified_gallery_takes_batches_from_the_gpu() -> None:
    """The on-device loader yields GPU tensors; the gallery compared them with CPU predictions
    (the crash at the end of every GPU fit)."""
    images = torch.linspace(-1, 1, 12).view(12, 1, 1, 1).expand(12, 1, 4, 4)
    labels = torch.zeros(12, dtype=torch.long)  # class 0, predicted 1 when bright
    loader = [to_accelerator((images[i : i + 4], labels[i : i + 4])) for i in range(0, 12, 4)]
    examples = find_misclassified(ByBrightness(), loader, 0, 1, 16, torch.device("cpu"))
    assert examples.indices == [6, 7, 8, 9, 10, 11]
    assert examples.images.shape == (6, 4, 4)
    assert (examples.p_predicted > 0.5).all()


def test_eval_scores_batches_from_the_gpu() -> None:
    """`eval`'s TTA loop given GPU batches: probabilities and labels come back on the CPU, ready
    for the metrics and reports."""
    images = torch.linspace(-1, 1, 8).view(8, 1, 1, 1).expand(8, 1, 4, 4)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    loader = [to_accelerator((images[i : i + 4], labels[i : i + 4])) for i in (0, 4)]
    probabilities, got = predict_proba(ByBrightness(), loader, "hflip", 1.125, torch.device("cpu"))
    assert type(probabilities) is torch.Tensor and type(got) is torch.Tensor
    assert torch.equal(got, labels) and torch.equal(probabilities.argmax(1), labels)


@pytest.mark.slow
def test_gpu_fit_with_on_device_batches_ends_with_artifacts_and_test(
    tmp_path: Path, mlflow_client
) -> None:
    """`python -m fer_lab.train` with its on-device splits on the stand-in GPU: the end-of-fit
    figures (which read the val loader themselves) are written and the test split runs."""
    result = run_cli(
        tmp_path,
        "dataset=synthetic",
        "dataset.train_per_class=10",
        "dataset.val_per_class=4",
        "dataset.test_per_class=4",
        "model=convnet0",
        "data._target_=tests.accelerator.AcceleratorDataModule",
        "data.pipeline=on_device",
        "data.batch_size=16",
        "trainer.max_epochs=1",
        "hydra.run.dir=run",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "data.pipeline=on_device" in result.stdout + result.stderr
    artifacts = tmp_path / "run" / "artifacts"
    assert (artifacts / "misclassified_val_best.png").is_file()
    assert (artifacts / "confusion_matrix_test.csv").is_file()
    (run,) = mlflow_client().search_runs(mlflow_client().search_experiments()[0].experiment_id)
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics


def test_device_auto_picks_what_torch_sees() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert inference_device("auto").type == expected
    assert inference_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device='gpu0'"):
        inference_device("gpu0")


class RunsCode:
    """What a hostile checkpoint smuggles in: unpickling it runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile_checkpoint(trained_checkpoint: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A real fer_lab checkpoint with a callable added; returns (checkpoint, marker)."""
    marker = tmp_path / "code_ran"
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    checkpoint["fer_lab_extra"] = RunsCode(marker)
    path = tmp_path / "run" / "checkpoints" / "shared.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)
    return path, marker


def test_hostile_checkpoint_is_refused_everywhere(
    hostile_checkpoint: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fer_lab.training.resume import _explicit

    path, marker = hostile_checkpoint
    monkeypatch.delenv(TRUST_ENV, raising=False)
    loads = {
        "eval/predict/visualize": lambda: load_trained(path),
        "misclassified gallery": lambda: net_from_checkpoint(nn.Linear(1, 1), path, "cpu"),
        "resume": lambda: _explicit(path, path.parent),
    }
    for name, load in loads.items():
        with pytest.raises(
            ConfigError, match=f"refused to load: it holds posix.system.*{TRUST_ENV}"
        ):
            load()
        assert not marker.exists(), name


def test_trusting_a_checkpoint_is_explicit(
    hostile_checkpoint: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, marker = hostile_checkpoint
    monkeypatch.setenv(TRUST_ENV, str(path))
    load_trained(path)
    assert marker.exists()  # the user vouched for it: its code ran


def test_not_a_checkpoint_is_still_reported_as_such(tmp_path: Path) -> None:
    path = tmp_path / "notes.ckpt"
    path.write_bytes(pickle.dumps("just text")[:5])
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_trained(path)


@pytest.mark.slow
def test_eval_cli_refuses_a_hostile_checkpoint_with_exit_2(
    hostile_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    path, marker = hostile_checkpoint
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    env.pop(TRUST_ENV, None)
    command = [sys.executable, "-m", "fer_lab.eval", f"ckpt_path={path}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert f"{TRUST_ENV}={path.resolve()}" in output
    assert "Traceback" not in output and not marker.exists()
