"""The on-device data path: a split held as one uint8 tensor on the training device, batches
cut by index there and augmented as a whole, so no per-image Python work sits in the loop."""

from collections.abc import Callable, Iterator

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


# Chunks of an epoch augmented at once, when the whole split would not fit the memory budget:
# large enough that the per-chunk op launches are a small share of the epoch.
MIN_CHUNK = 8192
# Peak bytes per image pixel while augmenting `augmentation=strong` (the image, its sampling grid,
# blend weights, the output): 48-64 measured (peak RSS of 8,192- and 16,384-face passes, CPU).
AUGMENT_BYTES_PER_PIXEL = 64


def chunk_length(n: int, pixels: int, budget_mb: float, batch_size: int) -> int:
    """Images augmented in one pass: the whole epoch if it fits `budget_mb`, else as many as
    fit but at least MIN_CHUNK, rounded to whole batches so that no batch spans two chunks."""
    fits = int(budget_mb * 2**20 // (pixels * AUGMENT_BYTES_PER_PIXEL))
    length = n if fits >= n else max(MIN_CHUNK, fits)
    return max(batch_size, length // batch_size * batch_size)


def _transform_all(
    images: torch.Tensor, transform: "batch_transform.BatchTransform"
) -> torch.Tensor:
    """A whole split through a deterministic transform, in chunks to bound the float copies."""
    return torch.cat([transform(chunk, train=False) for chunk in images.split(MIN_CHUNK)])


class DeviceBatches:
    """An iterable of (images, labels) batches for Lightning, drawn from tensors on `device`.

    A training epoch is augmented as a whole, or in chunks of at least MIN_CHUNK images under
    `memory_budget_mb`, at the epoch's start: one permutation, one table of random numbers
    (row i for the epoch's i-th image, so an image's augmentation does not depend on the
    batch or chunk size), one pass of the transform; batches are then slices. Nothing in it
    waits for the device.

    Shuffling draws one permutation per epoch from (seed, epoch) alone, with the epoch read
    from `current_epoch` (the trainer's), so a resumed run continues the sequence instead of
    replaying epoch 0's order; the augmentation stream follows the epoch the same way.
    Under data-parallel training each process takes every `world_size`-th index of it, as
    Lightning's DistributedSampler does for DataLoaders: in training each the same number
    (the remainder is left out, so every process runs as many steps), in evaluation every
    image once.
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
        current_epoch: Callable[[], int] = lambda: 0,
        memory_budget_mb: float = 4096,
    ) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform
        self.batch_size = batch_size
        self.train = train
        self.rank, self.world_size = rank, world_size
        self.seed = seed if seed is not None else int(torch.randint(2**31, ()).item())
        self.current_epoch = current_epoch
        pixels = transform.image_size**2 * images.shape[1]
        self.chunk = chunk_length(len(labels), pixels, memory_budget_mb, batch_size)
        # Without random ops every epoch sees the same pixels: transform them once.
        self.ready = None if transform.is_random(train) else _transform_all(images, transform)
        if not train:  # this process's share, in order: batches are slices of it
            share = self._indices(0)
            self.ready, self.labels = self.ready[share], labels[share]

    def _indices(self, epoch: int) -> torch.Tensor:
        n, device = len(self.labels), self.images.device
        if not self.train:
            return torch.arange(n, device=device)[self.rank :: self.world_size]
        generator = torch.Generator(device).manual_seed(self.seed * 1_000_003 + epoch)
        shares = n // self.world_size * self.world_size
        order = torch.randperm(n, device=device, generator=generator)
        return order[self.rank : shares : self.world_size]

    def __len__(self) -> int:
        n = len(self.labels)
        if not self.train:
            return -(-n // self.batch_size)
        n //= self.world_size
        # Training drops a last, smaller batch (as the per-sample path does): a batch of a
        # few images would give BatchNorm and the loss a noisy step.
        return n // self.batch_size if n > self.batch_size else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.train:
            yield from self._slices(self.ready, self.labels)
            return
        epoch = self.current_epoch()
        order = self._indices(epoch)[: len(self) * self.batch_size]
        self.transform.set_epoch(epoch)
        uniforms = (
            None if self.ready is not None else self.transform.uniforms(len(order), order.device)
        )
        for start in range(0, len(order), self.chunk):
            positions = slice(start, start + self.chunk)
            chosen = order[positions]
            if uniforms is None:
                images = self.ready[chosen]
            else:
                images = self.transform(self.images[chosen], True, uniforms[positions])
            yield from self._slices(images, self.labels[chosen])

    def _slices(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(labels), self.batch_size):
            end = start + self.batch_size
            yield images[start:end], labels[start:end]
