"""A trained fer_lab checkpoint, rebuilt on its own: network, classes and input pipeline.

Every checkpoint carries the resolved training config (`fer_lab_config`) and class names
(`fer_lab_classes`), so evaluation, prediction and visualisation need nothing but its path
and see images exactly as the model did in training (size, channels, normalisation).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from fer_lab.core.errors import ConfigError
from fer_lab.data.transforms import build_transforms
from fer_lab.models import FERNet
from fer_lab.training.checkpoint_io import UntrustedCheckpointError, load_checkpoint


@dataclass
class TrainedModel:
    net: FERNet
    classes: list[str]
    config: DictConfig
    path: Path

    @property
    def image_size(self) -> int:
        return int(self.config.model.input_size)

    @property
    def channels(self) -> int:
        return int(self.config.model.in_channels)

    @property
    def colour(self) -> bool:
        """Whether the model was trained on colour images (a 3-channel model trained on grey
        FER2013 saw the grey value three times, and photos must be shown to it that way)."""
        source = get_class(self.config.dataset._target_)
        return self.channels == 3 and getattr(source, "colour", True)

    def eval_transform(self) -> A.Compose:
        """Resize and normalise as in training, without augmentation: uint8 HxWxC -> tensor."""
        preprocess = instantiate(self.config.preprocess)
        return build_transforms(self.image_size, [], preprocess)[1]

    def mlflow_run_id(self) -> str | None:
        """The training run's id, from `run_state.json` beside the checkpoints folder."""
        from fer_lab.training.resume import read_state

        return read_state(self.path.parent.parent).get("mlflow_run_id")


def inference_device(name: str) -> torch.device:
    """`device=` of eval and predict: `auto` (a CUDA GPU when torch sees one, else the CPU) or
    a torch device name; a name torch rejects, or CUDA without a GPU, is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device={name!r}: {error}; use auto, cpu or cuda[:N]") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: torch sees no CUDA GPU here; use device=auto or cpu")
    return device


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, or a ConfigError naming `ckpt_path` and what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: no such file")
    try:
        checkpoint = load_checkpoint(path)
    except UntrustedCheckpointError as error:
        raise ConfigError(f"ckpt_path={error}") from None
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        raise ConfigError(f"ckpt_path={path}: not a readable checkpoint ({error})") from error
    if "fer_lab_config" not in checkpoint or "state_dict" not in checkpoint:
        raise ConfigError(
            f"ckpt_path={path}: not a fer_lab training checkpoint (no fer_lab_config); use one "
            "from a run's checkpoints/ folder"
        )
    return checkpoint


def load_trained(path: str | Path) -> TrainedModel:
    """The network of a training checkpoint with its weights, in eval mode."""
    checkpoint = read_checkpoint(path)
    config = OmegaConf.create(checkpoint["fer_lab_config"])
    model_config = OmegaConf.to_container(config.model)
    if "pretrained" in model_config:  # the checkpoint has the weights: download nothing
        model_config.update(pretrained=False, weights_path=None)
    net = instantiate(model_config)
    prefix = "net."
    weights = {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    net.load_state_dict(weights)
    net.eval()
    return TrainedModel(net, list(checkpoint["fer_lab_classes"]), config, Path(path))
