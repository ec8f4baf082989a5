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


def _transform_all(
    images: torch.Tensor, transform: "batch_transform.BatchTransform"
) -> torch.Tensor:
    """A whole split through a deterministic transform, in chunks to bound the float copies."""
    return torch.cat([transform(chunk, train=False) for chunk in images.split(4096)])


class DeviceBatches:
    """An iterable of (images, labels) batches for Lightning, drawn from tensors on `device`.

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
    ) -> None:
        # Without random ops every epoch sees the same pixels: transform them once.
        self.ready = None if transform.is_random(train) else _transform_all(images, transform)
        self.images = images
        self.labels = labels
        self.transform = transform
        self.batch_size = batch_size
        self.train = train
        self.rank, self.world_size = rank, world_size
        self.seed = seed if seed is not None else int(torch.randint(2**31, ()).item())
        self.current_epoch = current_epoch

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
            return -(-len(range(self.rank, n, self.world_size)) // self.batch_size)
        n //= self.world_size
        # Training drops a last, smaller batch (as the per-sample path does): a batch of a
        # few images would give BatchNorm and the loss a noisy step.
        return n // self.batch_size if n > self.batch_size else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.current_epoch()
        indices = self._indices(epoch)
        self.transform.set_epoch(epoch)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = indices[start : start + self.batch_size]
            if self.ready is not None:
                yield self.ready[batch], self.labels[batch]
            else:
                yield self.transform(self.images[batch], train=self.train), self.labels[batch]
