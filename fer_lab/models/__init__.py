"""Plain `nn.Module` networks, one per documented architecture (no Lightning inside)."""

from fer_lab.models.base import FERNet, count_parameters
from fer_lab.models.cntk import CNTKNet
from fer_lab.models.convnets import ConvNet0, SeedConvNet
from fer_lab.models.fer_vgg import FERVGG
from fer_lab.models.nouri import NouriNet
from fer_lab.models.tf_emotion import TFEmotionCNN
from fer_lab.models.vgg16_transfer import VGG16Transfer

__all__ = [
    "FERVGG",
    "CNTKNet",
    "ConvNet0",
    "FERNet",
    "NouriNet",
    "SeedConvNet",
    "TFEmotionCNN",
    "VGG16Transfer",
    "count_parameters",
]
