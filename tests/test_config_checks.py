"""Impossible configs stop with one line naming the key, before data or weights load."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fer_lab.core.config_checks import check_choices, check_classes, check_launch, check_values
from fer_lab.core.errors import ConfigError
from fer_lab.models import ConvNet0
from fer_lab.models.base import check_forward

from .helpers import compose_config, run_cli


def composed(*overrides: str):
    cfg = compose_config("dataset=synthetic", *overrides)
    OmegaConf.update(cfg, "names", {"model": "model", "dataset": "synthetic"})
    return cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=0", "optimizer.lr=0: must be > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1: must be > 0"),
        ("model.dropout=1.0", "model.dropout=1.0: must be in [0, 1)"),
        ("model.dropout=-0.2", "model.dropout=-0.2: must be in [0, 1)"),
        ("data.batch_size=0", "data.batch_size=0: must be >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: must be >= 1"),
        ("optimizer=sgd optimizer.momentum=1.5", "optimizer.momentum=1.5"),
        ("optimizer.lr=fast", "optimizer.lr='fast': must be a number"),
        ("data.image_size=64", "data.image_size=64 but model model takes model.input_size=48"),
    ],
)
def test_impossible_values_name_their_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_values(composed(*override.split()))


def test_default_configs_pass() -> None:
    for model in ("dachapally", "nouri", "vgg16_transfer", "convnet5"):
        check_values(composed(f"model={model}"))


def test_an_input_size_the_network_cannot_take_is_reported() -> None:
    net = ConvNet0(num_classes=7, in_channels=1, input_size=48)
    check_forward(net, 1, 48, 7, "convnet0")
    with pytest.raises(ConfigError, match=r"model convnet0 cannot take 1x20x20 images"):
        check_forward(net, 1, 20, 7, "convnet0")
    with pytest.raises(ConfigError, match=r"returns \(1, 7\) for one image; expected \(1, 2\)"):
        check_forward(net, 1, 48, 2, "convnet0")


def test_checkpoint_classes_must_match(tmp_path: Path) -> None:
    check_classes(["happy", "sad"], ["happy", "sad"], tmp_path / "x.ckpt")
    check_classes(None, ["happy", "sad"], tmp_path / "x.ckpt")
    with pytest.raises(ConfigError, match="trained on 2 classes"):
        check_classes(["happy", "sad"], ["angry", "happy", "sad"], tmp_path / "x.ckpt")


def test_unknown_config_names_exit_with_2(capsys) -> None:
    check_choices(["model=dachapally", "dataset=synthetic", "model.dropout=0.2", "+x=1"])
    check_choices(["-m", "model=convnet0,convnet5", "model=glob(*)", "experiment=null"])
    with pytest.raises(SystemExit) as stop:
        check_choices(["model=dachapaly"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "Unknown model 'dachapaly'" in error and "'dachapally'" in error


def test_config_dir_options_are_known(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("_target_: x\n")
    check_choices(["--config-dir", str(tmp_path), "model=mine"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [("model=dachapaly", "Unknown model 'dachapaly'"), ("optimizer.lr=-1", "optimizer.lr=-1")],
)
def test_cli_reports_config_errors_without_traceback(
    tmp_path: Path, override: str, message: str
) -> None:
    result = run_cli(tmp_path, "dataset=synthetic", override, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert message in output
    assert "Traceback" not in output


def test_ddp_on_cpus_trains_in_fp32_without_sync_batchnorm() -> None:
    cpu = composed("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert (cpu.trainer.precision, cpu.trainer.sync_batchnorm) == ("32-true", False)
    gpu = composed("trainer=ddp")
    assert (gpu.trainer.precision, gpu.trainer.sync_batchnorm) == ("bf16-mixed", True)


def test_ddp_combinations_that_cannot_work_are_refused() -> None:
    compiled = composed("trainer=ddp", "speed.compile=true")
    with pytest.raises(ConfigError, match=r"trainer\.sync_batchnorm=false"):
        check_launch(compiled, multirun=False, environ={})
    ddp = composed("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    check_launch(ddp, multirun=False, environ={})
    with pytest.raises(ConfigError, match=r"hydra\.launcher\.tasks_per_node=N"):
        check_launch(ddp, multirun=True, environ={})
    check_launch(ddp, multirun=True, environ={"SLURM_NTASKS": "2"})  # a trial's SLURM tasks
    check_launch(composed("trainer=gpu"), multirun=True, environ={})
