"""`python -m fer_lab.eval ckpt_path=...`: score a trained checkpoint on its val or test split,
with test-time augmentation if asked, into its MLflow training run (fer_lab/inference/evaluate.py).
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fer_lab.core.cli import run, user_errors_exit_2
from fer_lab.core.config import CONFIG_PATH
from fer_lab.inference.evaluate import evaluate


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> None:
    with user_errors_exit_2():
        evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    run(main)
