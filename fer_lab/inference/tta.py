"""Test-time augmentation (TTA): class probabilities averaged over views of each image.

Each mode averages the softmax over its views of an image:

- `none`: the image as the model saw it in training (resized and normalised);
- `hflip`: the image and its mirror;
- `tencrop`: the usual FER protocol, the four corner crops and the centre crop plus their
  mirrors. Our networks take their full training input size (FER papers crop 44 from 48 and
  train on crops), so the image is first upscaled by `scale` (48 -> 54 at 1.125) and the ten
  crops are taken at the input size. The upscaling is bilinear on the normalised tensor: the
  same as upscaling the pixels for scale01 and standardize, close to it for minmax.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import ten_crop

TTA_MODES = ("none", "hflip", "tencrop")


def tta_views(images: torch.Tensor, mode: str, scale: float = 1.125) -> list[torch.Tensor]:
    """The views of a batch [B, C, H, W] that `mode` averages over, each [B, C, H, W].

    tencrop's order is torchvision's: top-left, top-right, bottom-left, bottom-right, centre,
    then the same five of the mirrored image.
    """
    if mode == "none":
        return [images]
    if mode == "hflip":
        return [images, images.flip(-1)]
    if mode == "tencrop":
        height, width = images.shape[-2:]
        size = (round(height * scale), round(width * scale))
        upscaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return list(ten_crop(upscaled, [height, width]))
    raise ValueError(f"unknown TTA mode {mode!r}; expected one of {TTA_MODES}")


@torch.no_grad()
def predict_proba(
    net: nn.Module, loader: DataLoader, mode: str, scale: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [N, K], averaged over the TTA views, and the labels [N], on the CPU."""
    net.eval().to(device)
    probabilities, labels = [], []
    for images, targets in loader:
        views = tta_views(images.to(device), mode, scale)
        total = sum(torch.softmax(net(view).float(), dim=1) for view in views)
        probabilities.append((total / len(views)).cpu())
        labels.append(targets.cpu())
    return torch.cat(probabilities), torch.cat(labels)
