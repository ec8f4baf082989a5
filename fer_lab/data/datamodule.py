"""The one LightningDataModule: any dataset loader, sized and normalised for the model."""

from collections.abc import Sequence
from typing import Protocol

import albumentations as A
import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, get_worker_info

from fer_lab.data.faces import FaceDataset, FaceSplits
from fer_lab.data.transforms import build_transforms


def seed_augmentation(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream, derived from the torch seed that
    `seed_everything` fixes, so runs repeat and workers do not repeat each other."""
    info = get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


class FaceSource(Protocol):
    """What a `conf/dataset/*.yaml` target provides."""

    name: str
    classes: Sequence[str]
    colour: bool  # whether its images have colour (else models with 3 channels see grey x3)

    def load(self) -> FaceSplits: ...


class FERDataModule(pl.LightningDataModule):
    """Train/val/test loaders over a `FaceSource`, at the model's input size and channels."""

    def __init__(
        self,
        source: FaceSource,
        image_size: int,
        channels: int,
        augmentation: Sequence[A.BasicTransform],
        preprocess: A.BasicTransform,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {batch_size}")
        self.source = source
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_transform, self.eval_transform = build_transforms(
            image_size, augmentation, preprocess, seed
        )
        self.splits: FaceSplits | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.source.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.source.load()

    def class_counts(self, split: str) -> list[int]:
        """Images per class in `split` ('train', 'val' or 'test')."""
        self.setup()
        labels = getattr(self.splits, split).labels
        return np.bincount(labels, minlength=len(self.classes)).tolist()

    def _loader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        transform = self.train_transform if train else self.eval_transform
        dataset = FaceDataset(getattr(self.splits, split), self.channels, transform)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_augmentation,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
