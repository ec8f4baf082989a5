"""Dataset loaders (one per `conf/dataset/*.yaml`) and the LightningDataModule over them."""

from fer_lab.data.datamodule import FERDataModule
from fer_lab.data.faces import Faces, FaceSplits

__all__ = ["FERDataModule", "FaceSplits", "Faces"]
