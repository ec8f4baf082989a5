"""`python -m fer_lab.predict ckpt_path=... images=...`: the expression of every face in ordinary
photos, as a CSV (fer_lab/inference/photos.py)."""

import hydra
from omegaconf import DictConfig

from fer_lab.core.cli import run, user_errors_exit_2
from fer_lab.core.config import CONFIG_PATH
from fer_lab.inference.photos import predict


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors_exit_2():
        predict(cfg)


if __name__ == "__main__":
    run(main)
