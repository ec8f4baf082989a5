"""The one LightningDataModule: any dataset loader, sized and normalised for the model."""

import logging
import multiprocessing
import sys
from collections.abc import Iterable, Sequence
from typing import Protocol

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, get_worker_info

from fer_lab.core.config_checks import PIPELINES
from fer_lab.data.faces import FaceDataset, FaceSplits
from fer_lab.data.on_device import batch_transform
from fer_lab.data.on_device.batches import DeviceBatches, faces_as_tensor
from fer_lab.data.transforms import build_transforms

log = logging.getLogger(__name__)
# `pipeline=auto` keeps whole datasets on the training device only for small images (FER's
# 48x48 is 83 MB for FER2013); larger ones go through the per-sample path.
ON_DEVICE_MAX_SIZE = 64


def seed_augmentation(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream, derived from the torch seed that
    `seed_everything` fixes, so runs repeat and workers do not repeat each other."""
    info = get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


def _worker_start(num_workers: int) -> multiprocessing.context.BaseContext | None:
    """Loader workers fork on Linux, torch's own default there. Said explicitly because in a
    sweep trial run by hydra/launcher=joblib the default context is loky's, whose processes
    torch cannot start ("'Process' object has no attribute 'env'")."""
    if num_workers > 0 and sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return None


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
        pipeline: str = "per_sample",
        on_device_budget_mb: float = 4096,
        steps_per_batch: int = 1,
    ) -> None:
        """`steps_per_batch`: optimizer steps each training batch feeds (speed.steps_per_call):
        the training loader's batches hold that many times `batch_size` images."""
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {batch_size}")
        if pipeline not in PIPELINES:
            raise ValueError(f"data.pipeline must be one of {list(PIPELINES)}, got {pipeline!r}")
        self.source = source
        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.pipeline = pipeline
        self.on_device_budget_mb = float(on_device_budget_mb)
        self.steps_per_batch = steps_per_batch
        self.augmentation, self.preprocess = list(augmentation), preprocess
        self.train_transform, self.eval_transform = build_transforms(
            image_size, augmentation, preprocess, seed
        )
        self.splits: FaceSplits | None = None
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

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

    def device(self) -> torch.device:
        """Where training runs: the attached trainer's device, else the CPU."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def resolved_pipeline(self) -> str:
        """`per_sample` or `on_device`, deciding `auto` (see conf/train.yaml, data.pipeline)."""
        if self.pipeline != "auto":
            return self.pipeline
        self.setup()
        images = self.splits.train.images
        small = isinstance(images, np.ndarray) and max(images.shape[1:3]) <= ON_DEVICE_MAX_SIZE
        if not small:
            return "per_sample"
        why_not = batch_transform.BatchTransform.unsupported(
            self.augmentation, self.preprocess, self.image_size
        )
        if why_not:
            log.info("data.pipeline=auto: per_sample, because %s", why_not)
            return "per_sample"
        return "on_device"

    def _loader(self, split: str, train: bool) -> Iterable:
        self.setup()
        if self.resolved_pipeline() == "on_device":
            return self._device_batches(split, train)
        transform = self.train_transform if train else self.eval_transform
        dataset = FaceDataset(getattr(self.splits, split), self.channels, transform)
        batch_size = self._batch_size(train)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            sampler=None if train else self._evaluation_shards(dataset),
            drop_last=train and len(dataset) > batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_augmentation,
            multiprocessing_context=_worker_start(self.num_workers),
        )

    def _batch_size(self, train: bool) -> int:
        return self.batch_size * self.steps_per_batch if train else self.batch_size

    def _evaluation_shards(self, dataset: FaceDataset) -> UnrepeatedDistributedSampler | None:
        """Under DDP, each process's share of an evaluation split, every image exactly once:
        Lightning's default DistributedSampler pads the shares to equal length by repeating
        images, which the ranks' summed metrics would count twice."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size == 1:
            return None
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    def _device_batches(self, split: str, train: bool) -> DeviceBatches:
        device = self.device()
        if split not in self._on_device:
            faces = getattr(self.splits, split)
            images = faces_as_tensor(faces, self.channels, self.image_size)
            labels = torch.from_numpy(faces.labels)
            self._on_device[split] = (images.to(device), labels.to(device))
            log.info(
                "data.pipeline=on_device: %s split, %s on %s", split, tuple(images.shape), device
            )
        trainer = getattr(self, "trainer", None)
        rank = trainer.global_rank if trainer is not None else 0
        # Each process augments its own share of a batch with its own random stream.
        seed = None if self.seed is None else self.seed + rank
        transform = batch_transform.BatchTransform.from_albumentations(
            self.augmentation, self.preprocess, self.image_size, seed
        )
        return DeviceBatches(
            *self._on_device[split],
            transform=transform,
            batch_size=self._batch_size(train),
            train=train,
            seed=self.seed,  # the same shuffle everywhere, so the processes' shares are disjoint
            rank=rank,
            world_size=trainer.world_size if trainer is not None else 1,
            current_epoch=(lambda: trainer.current_epoch) if trainer is not None else lambda: 0,
            memory_budget_mb=self.on_device_budget_mb,
        )

    def train_dataloader(self) -> Iterable:
        return self._loader("train", train=True)

    def val_dataloader(self) -> Iterable:
        return self._loader("val", train=False)

    def test_dataloader(self) -> Iterable:
        return self._loader("test", train=False)
