"""The on-device loader: its order a function of (seed, epoch), shares that DDP can run, and
whole-epoch augmentation whose result for an image depends on nothing but (seed, epoch, place)."""

import albumentations as A
import pytest
import torch
from hydra.utils import instantiate

from fer_lab.bench.op_count import count_ops
from fer_lab.data.on_device.batch_transform import BatchTransform
from fer_lab.data.on_device.batches import MIN_CHUNK, DeviceBatches, chunk_length

from .helpers import compose_config

SCALE01 = A.Normalize(mean=0.0, std=1.0, max_pixel_value=255.0)


def strong() -> tuple[list, A.BasicTransform]:
    cfg = compose_config("experiment=fer_lab_best")
    return list(instantiate(cfg.augmentation.train)), instantiate(cfg.preprocess)


def batches(
    n: int,
    epoch: list[int],
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 4,
    augmentation: list | None = None,
    images: torch.Tensor | None = None,
) -> DeviceBatches:
    if images is None:
        images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4)
    size = images.shape[-1]
    transform = BatchTransform.from_albumentations(augmentation or [], SCALE01, size, seed=3)
    return DeviceBatches(
        images.contiguous(),
        torch.arange(n),
        transform,
        batch_size,
        train=True,
        seed=7,
        rank=rank,
        world_size=world_size,
        current_epoch=lambda: epoch[0],
    )


def order(loader: DeviceBatches) -> list[int]:
    return [int(label) for _, labels in loader for label in labels]


def by_label(loader: DeviceBatches) -> dict[int, torch.Tensor]:
    return {int(y): x for images, labels in loader for x, y in zip(images, labels, strict=True)}


def test_a_resumed_loader_continues_the_epoch_sequence() -> None:
    epoch = [0]
    uninterrupted = batches(20, epoch)
    orders = []
    for epoch[0] in range(3):
        orders.append(order(uninterrupted))
    assert orders[0] != orders[1] != orders[2]
    resumed_at = [2]
    assert order(batches(20, resumed_at)) == orders[2]  # a new process, from epoch 2


def test_a_resumed_loader_continues_the_augmentation_stream() -> None:
    faces = torch.randint(0, 256, (24, 1, 48, 48), dtype=torch.uint8)
    epoch = [0]
    uninterrupted = batches(24, epoch, augmentation=strong()[0], images=faces)
    epochs = []
    for epoch[0] in range(3):
        epochs.append(by_label(uninterrupted))
    assert not torch.equal(epochs[1][0], epochs[2][0])
    resumed = by_label(batches(24, [2], augmentation=strong()[0], images=faces))
    assert all(torch.equal(resumed[i], epochs[2][i]) for i in resumed)


def test_ddp_shares_are_disjoint_and_equally_long() -> None:
    epoch = [1]
    shares = [order(batches(19, epoch, rank, 2)) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 8  # 9 each of 18 (one left out), 2 batches of 4
    assert not set(shares[0]) & set(shares[1])


def test_an_images_augmentation_depends_on_neither_batch_nor_chunk_size() -> None:
    faces = torch.randint(0, 256, (96, 1, 48, 48), dtype=torch.uint8)
    results = []
    for batch_size, chunk in [(32, None), (8, 16), (4, 4), (16, 48)]:
        loader = batches(96, [1], batch_size=batch_size, augmentation=strong()[0], images=faces)
        if chunk is not None:
            loader.chunk = chunk
        results.append(by_label(loader))
    assert len(results[0]) == 96
    assert not torch.allclose(results[0][0], faces[0].float() / 255)  # it did augment
    for other in results[1:]:
        assert other.keys() == results[0].keys()
        for i, image in results[0].items():
            torch.testing.assert_close(other[i], image, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("n", "budget_mb", "expected"),
    [
        (28_709, 8192, 28_672),  # FER2013 fits: one pass, in whole batches of 64
        (100_000, 1024, MIN_CHUNK),  # 1 GiB / (48 * 48 * 64 B) = 7,281 faces: raised to 8,192
        (100_000, 4096, 29_120),  # 29,127 faces fit: 455 batches
    ],
)
def test_chunks_fit_the_budget_in_whole_batches(n: int, budget_mb: int, expected: int) -> None:
    assert chunk_length(n, 48 * 48, budget_mb, 64) == expected


def test_an_epoch_costs_a_fixed_number_of_ops_plus_slices() -> None:
    """The augmentation runs once per epoch: one more batch is two slices, not a transform."""
    faces = torch.randint(0, 256, (4096, 1, 48, 48), dtype=torch.uint8)
    augmentation, normalise = strong()
    counts = {}
    for batch_size in (16, 64):
        transform = BatchTransform.from_albumentations(augmentation, normalise, 48, seed=0)
        loader = DeviceBatches(faces, torch.arange(4096), transform, batch_size, train=True)
        counts[batch_size] = count_ops(lambda loader=loader: list(loader)).total
    per_batch = (counts[16] - counts[64]) / (4096 // 16 - 4096 // 64)
    assert per_batch <= 4
    assert counts[16] <= 3000
