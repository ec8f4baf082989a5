"""The on-device loader's order: a function of (seed, epoch), shares that DDP can run."""

import albumentations as A
import torch

from fer_lab.data.on_device.batch_transform import BatchTransform
from fer_lab.data.on_device.batches import DeviceBatches


def batches(n: int, epoch: list[int], rank: int = 0, world_size: int = 1) -> DeviceBatches:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    scale01 = A.Normalize(mean=0.0, std=1.0, max_pixel_value=255.0)
    transform = BatchTransform.from_albumentations([], scale01, 4, seed=3)
    return DeviceBatches(
        images,
        torch.arange(n),
        transform,
        4,
        train=True,
        seed=7,
        rank=rank,
        world_size=world_size,
        current_epoch=lambda: epoch[0],
    )


def order(loader: DeviceBatches) -> list[int]:
    return [int(label) for _, labels in loader for label in labels]


def test_a_resumed_loader_continues_the_epoch_sequence() -> None:
    epoch = [0]
    uninterrupted = batches(20, epoch)
    orders = []
    for epoch[0] in range(3):
        orders.append(order(uninterrupted))
    assert orders[0] != orders[1] != orders[2]
    resumed_at = [2]
    assert order(batches(20, resumed_at)) == orders[2]  # a new process, from epoch 2


def test_ddp_shares_are_disjoint_and_equally_long() -> None:
    epoch = [1]
    shares = [order(batches(19, epoch, rank, 2)) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 8  # 9 each of 18 (one left out), 2 batches of 4
    assert not set(shares[0]) & set(shares[1])
