"""The on-device data path: a split held as one uint8 tensor on the training device, batches
cut by index there and augmented as a whole, so no per-image Python work sits in the loop."""

from collections.abc import Iterator

import cv2
import numpy as np
import torch

from fer_lab.data.faces import Faces, read_image
from fer_lab.data.on_device import batch_transform


def faces_as_tensor(faces: Faces, channels: int, image_size: int) -> torch.Tensor:
    """A split's images as uint8 [N, C, H, W]. Decoded (greyscale) arrays keep their size, the
    batch transform resizes; image files are decoded once and resized to `image_size`, since
    photos of different sizes cannot share one tensor."""
    if isinstance(faces.images, np.ndarray):
        grey = torch.from_numpy(np.ascontiguousarray(faces.images))[:, None]
        return grey.expand(-1, channels, -1, -1).contiguous()
    size = (image_size, image_size)
    decoded = [
        cv2.resize(read_image(path, channels), size, interpolation=cv2.INTER_AREA)
        for path in faces.images
    ]
    array = np.stack([image.reshape(*size, channels) for image in decoded])
    return torch.from_numpy(array.transpose(0, 3, 1, 2).copy())


def _transform_all(
    images: torch.Tensor, transform: "batch_transform.BatchTransform"
) -> torch.Tensor:
    """A whole split through a deterministic transform, in chunks to bound the float copies."""
    return torch.cat([transform(chunk, train=False) for chunk in images.split(4096)])


class DeviceBatches:
    """An iterable of (images, labels) batches for Lightning, drawn from tensors on `device`.

    Shuffling draws one permutation per epoch from a seeded generator on the device. Under
    data-parallel training each process takes every `world_size`-th index of it, as
    Lightning's DistributedSampler does for DataLoaders.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: "batch_transform.BatchTransform",
        batch_size: int,
        train: bool,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        # Without random ops every epoch sees the same pixels: transform them once.
        self.ready = None if transform.is_random(train) else _transform_all(images, transform)
        self.images = images
        self.labels = labels
        self.transform = transform
        self.batch_size = batch_size
        self.train = train
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator(images.device)
        if seed is not None:
            self.generator.manual_seed(seed)

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, device=self.images.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.images.device)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(range(self.rank, len(self.labels), self.world_size))
        # Training drops a last, smaller batch (as the per-sample path does): a batch of a
        # few images would give BatchNorm and the loss a noisy step.
        if self.train and n > self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self._indices()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = indices[start : start + self.batch_size]
            if self.ready is not None:
                yield self.ready[batch], self.labels[batch]
            else:
                yield self.transform(self.images[batch], train=self.train), self.labels[batch]
