"""`python -m fer_lab.visualize ckpt_path=...`: a trained network's first-layer filters and each
conv layer's feature maps, as PNGs and in its MLflow run (fer_lab/inference/visualization.py)."""

import hydra
from omegaconf import DictConfig

from fer_lab.core.cli import run, user_errors_exit_2
from fer_lab.core.config import CONFIG_PATH
from fer_lab.core.errors import ConfigError
from fer_lab.inference.visualization import visualize


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="visualize")
def main(cfg: DictConfig) -> None:
    with user_errors_exit_2():
        if cfg.ckpt_path is None:
            raise ConfigError("ckpt_path= is required: a .ckpt from a training run's checkpoints/")
        visualize(cfg.ckpt_path, cfg.output_dir, cfg.image, cfg.max_channels, cfg.tracking_uri)


if __name__ == "__main__":
    run(main)
