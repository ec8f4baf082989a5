"""Every `experiment=` config composes and trains one tiny step on the synthetic faces."""

from importlib.resources import files
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from fer_lab.train import train

EXPERIMENTS = sorted(
    p.name.removesuffix(".yaml")
    for p in files("fer_lab.conf").joinpath("experiment").iterdir()
    if p.name.endswith(".yaml")
)
TINY = [
    "dataset=synthetic",
    "dataset.train_per_class=4",
    "dataset.val_per_class=2",
    "dataset.test_per_class=2",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=1",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "+trainer.num_sanity_val_steps=0",
    "logger=csv",
]


def test_every_seed_has_a_study() -> None:
    for seed in ("seed000", "seed001", "seed002", "seed003", "seed004", "fer_lab_best"):
        assert seed in EXPERIMENTS


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_trains_one_step(experiment: str, tmp_path: Path) -> None:
    overrides = [f"experiment={experiment}", *TINY]
    if experiment == "seed002":
        # No ImageNet download in tests; 64 px keeps VGG16 quick on a CPU.
        overrides += ["model.pretrained=false", "model.input_size=64"]
    with initialize_config_module("fer_lab.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it to the task
    score = train(cfg)
    assert 0.0 <= score <= 1.0
    assert cfg.experiment_tag == experiment
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
