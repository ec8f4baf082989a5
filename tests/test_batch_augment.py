"""The batch (on-device) augmentation means what the albumentations configs mean, per sample."""

import warnings
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from fer_lab.data.on_device.batch_transform import BatchTransform
from fer_lab.data.transforms import build_transforms

from .helpers import REPO_ROOT, compose_config

AUGMENTATIONS = sorted(path.stem for path in Path(REPO_ROOT, "conf", "augmentation").glob("*.yaml"))
PREPROCESS = sorted(path.stem for path in Path(REPO_ROOT, "conf", "preprocess").glob("*.yaml"))
SCALE01 = A.ToFloat(max_value=255)
with warnings.catch_warnings():  # "ShiftScaleRotate is a special case of Affine": it is mapped
    warnings.simplefilter("ignore", UserWarning)
    SHIFT_SCALE_ROTATE = A.ShiftScaleRotate((0.1, 0.1), (0.2, 0.2), (20, 20), p=1.0)


def smooth_face(size: int = 48) -> np.ndarray:
    """A smooth uint8 image with a bright off-centre block: asymmetric, and smooth enough that
    cv2's fixed-point warps and our float ones agree to a few grey levels."""
    y, x = np.mgrid[0:size, 0:size]
    image = 128 + 60 * np.sin(x / 5.0) + 50 * np.cos(y / 7.0)
    image[10:14, 5:9] = 255
    return image.clip(0, 255).astype(np.uint8)


def as_batch(*images: np.ndarray) -> torch.Tensor:
    """uint8 [B, C, H, W] from HxW or HxWxC arrays."""
    stacked = np.stack([image if image.ndim == 3 else image[..., None] for image in images])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2)


def augment(transforms: list, images: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Our training output in grey levels (0..255), [B, C, H, W]."""
    transform = BatchTransform.from_albumentations(transforms, SCALE01, images.shape[-1], seed)
    return transform(images, train=True).numpy() * 255


def albumentations(transforms: list, image: np.ndarray) -> np.ndarray:
    return A.Compose(transforms)(image=image)["image"].astype(np.float32)


def from_config(name: str, *overrides: str) -> tuple[list, A.BasicTransform, int]:
    cfg = compose_config(f"augmentation={name}", *overrides)
    return (
        list(instantiate(cfg.augmentation.train)),
        instantiate(cfg.preprocess),
        cfg.data.image_size,
    )


@pytest.mark.parametrize("preprocess", PREPROCESS)
@pytest.mark.parametrize("source_size", [48, 40])
def test_eval_equals_the_albumentations_eval_pipeline(preprocess: str, source_size: int) -> None:
    _, normalise, image_size = from_config("none", f"preprocess={preprocess}")
    rng = np.random.default_rng(0)
    images = rng.integers(30, 200, (3, source_size, source_size), dtype=np.uint8)
    images[2] = images[2] // 3 + 60  # low contrast (70..126), for min_max to stretch
    low, high = np.array([0, 0, 50]), np.array([255, 255, 150])
    images[:, 0, 0], images[:, -1, -1] = low, high  # corners survive resizing: same min/max
    _, evaluation = build_transforms(image_size, [], normalise)
    expected = np.stack([evaluation(image=image)["image"].numpy() for image in images])
    ours = BatchTransform.from_albumentations([], normalise, image_size)(as_batch(*images), False)
    assert ours.dtype == torch.float32 and ours.shape == (3, 1, image_size, image_size)
    if source_size == image_size:
        np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5, rtol=0)
        return
    # cv2's fixed-point resize may round to the next grey level: allow one, in output units.
    level = {"minmax": 1 / (high - low), "scale01": np.full(3, 1 / 255)}.get(preprocess)
    level = np.full(3, 1 / (255 * normalise.std)) if level is None else level
    for i in range(3):
        np.testing.assert_allclose(ours[i].numpy(), expected[i], atol=1.01 * level[i], rtol=0)
        assert np.abs(ours[i].numpy() - expected[i]).mean() < 0.25 * level[i]  # and rarely so


@pytest.mark.parametrize(
    "normalise",
    [
        A.Normalize(),  # ImageNet mean/std, one value per channel
        A.Normalize(normalization="image"),
        A.Normalize(normalization="image_per_channel"),
        A.Normalize(normalization="min_max_per_channel"),
        A.ToFloat(max_value=100),
    ],
    ids=["imagenet", "image", "image_per_channel", "min_max_per_channel", "to_float"],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_other_normalisations_match_albumentations(normalise: A.BasicTransform, channels: int):
    images = np.random.default_rng(1).integers(0, 256, (2, 48, 48, channels), dtype=np.uint8)
    images[..., -1] //= 2  # channels differ in range
    _, evaluation = build_transforms(48, [], normalise)
    expected = np.stack([evaluation(image=image)["image"].numpy() for image in images])
    ours = BatchTransform.from_albumentations([], normalise, 48)(as_batch(*images), False)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4, rtol=1e-5)


def test_per_channel_fill_matches_albumentations() -> None:
    image = np.stack([smooth_face(), smooth_face().T, 255 - smooth_face()], axis=2)
    rotate = A.Affine(rotate=(25, 25), scale=(0.8, 0.8), fill=(10, 120, 250), p=1.0)
    ours = augment([rotate], as_batch(image))[0].transpose(1, 2, 0)
    difference = np.abs(ours - albumentations([rotate], image))
    assert difference.mean() < 0.5 and difference.max() < 5


def test_horizontal_flip_with_p1_is_torch_flip() -> None:
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    out = augment([A.HorizontalFlip(p=1.0)], images)
    np.testing.assert_allclose(out, torch.flip(images, [-1]).float().numpy(), atol=1e-3)


@pytest.mark.parametrize(
    ("translate", "moved"),
    [({"x": 0.25, "y": 0.0}, (20, 22)), ({"x": 0.0, "y": -0.25}, (8, 10))],
)
def test_affine_shift_moves_a_dot_as_albumentations_does(translate: dict, moved: tuple) -> None:
    image = np.zeros((48, 48), np.uint8)
    image[20, 10] = 255
    shift = A.Affine(translate_percent={k: (v, v) for k, v in translate.items()}, p=1.0)
    ours = augment([shift], as_batch(image))[0, 0]
    reference = albumentations([shift], image)
    assert np.unravel_index(ours.argmax(), ours.shape) == moved  # 0.25 * 48 = 12 pixels
    assert np.unravel_index(reference.argmax(), reference.shape) == moved
    np.testing.assert_allclose(ours, reference, atol=1e-3)


@pytest.mark.parametrize(
    "transform",
    [
        A.Affine(rotate=(90, 90), p=1.0),
        A.Affine(rotate=(17, 17), p=1.0),
        A.Affine(shear={"x": (10, 10), "y": (-6, -6)}, p=1.0),
        A.Affine(rotate=(-13, -13), scale={"x": (1.1, 1.1), "y": (0.8, 0.8)}, p=1.0, fill=77),
        A.Affine(translate_percent=(0.1, 0.1), rotate=(30, 30), border_mode=cv2.BORDER_REFLECT_101),
        A.Affine(scale=(0.4, 0.4), border_mode=cv2.BORDER_REFLECT, p=1.0),
        A.Affine(translate_px={"x": (5, 5), "y": (-3, -3)}, border_mode=cv2.BORDER_REPLICATE, p=1),
        SHIFT_SCALE_ROTATE,
        A.VerticalFlip(p=1.0),
    ],
    ids=[
        "rot90",
        "rot17",
        "shear",
        "rot-scale-fill",
        "reflect101",
        "reflect",
        "px",
        "ssr",
        "vflip",
    ],
)
def test_fixed_geometry_matches_albumentations(transform: A.BasicTransform) -> None:
    transform.p = 1.0
    image = smooth_face()
    ours = augment([transform], as_batch(image))[0, 0]
    reference = albumentations([transform], image)
    assert np.abs(ours - smooth_face()).mean() > 5  # it did move something
    # cv2 warps uint8 with 1/32-pixel fixed point and rounds; on a smooth image that is little.
    assert np.abs(ours - reference).mean() < 0.5
    assert np.abs(ours - reference).max() < 5


def test_chained_borders_match_albumentations() -> None:
    chain = [
        A.Affine(translate_percent=(0.2, 0.2), fill=30, p=1.0),
        A.Affine(scale=(0.6, 0.6), border_mode=cv2.BORDER_REFLECT_101, p=1.0),
        A.HorizontalFlip(p=1.0),
    ]
    image = smooth_face()
    difference = np.abs(augment(chain, as_batch(image))[0, 0] - albumentations(chain, image))
    assert difference.mean() < 0.5 and difference.max() < 3


def test_random_resized_crop_crops_within_its_bounds_and_resizes() -> None:
    ramp = np.zeros((48, 48, 2), np.uint8)  # channel 0 = 5 x, channel 1 = 5 y
    ramp[..., 0], ramp[..., 1] = np.mgrid[0:48, 0:48][::-1] * 5
    crop = A.RandomResizedCrop(size=(48, 48), scale=(0.5, 0.8), ratio=(0.75, 1.33))
    out = augment([crop], as_batch(*[ramp] * 64))
    width = (out[:, 0, 24, 40] - out[:, 0, 24, 8]) / 32 * 48 / 5  # ramp slope -> crop size
    height = (out[:, 1, 40, 24] - out[:, 1, 8, 24]) / 32 * 48 / 5
    area = width * height / 48**2
    assert area.min() > 0.5 - 0.05 and area.max() < 0.8 + 0.05
    assert (width / height).min() > 0.75 - 0.05 and (width / height).max() < 1.33 + 0.05
    x0 = out[:, 0, 24, 1] / 5 - (1.5 * width / 48 - 0.5)  # left edge from the ramp's value
    assert x0.min() > -0.1 and (x0 + width).max() < 48.1 and x0.std() > 1  # inside, and varied
    first = out[0].transpose(1, 2, 0)  # the interior equals cv2's crop-and-resize
    y0 = out[0, 1, 1, 24] / 5 - (1.5 * height[0] / 48 - 0.5)
    left, top, w, h = (round(float(v)) for v in (x0[0], y0, width[0], height[0]))
    expected = cv2.resize(
        ramp[top : top + h, left : left + w], (48, 48), interpolation=cv2.INTER_LINEAR
    )
    np.testing.assert_allclose(first[1:-1, 1:-1], expected[1:-1, 1:-1], atol=1.01)


def test_pad_and_crop_is_a_shift_of_the_padded_image() -> None:
    image = smooth_face()
    pad_crop = [A.PadIfNeeded(56, 56, fill=0), A.RandomCrop(48, 48)]
    out = augment(pad_crop, as_batch(*[image] * 32))[:, 0]
    padded = np.pad(image, 4).astype(np.float32)
    offsets = set()
    for sample in out:
        matches = [
            (y, x)
            for y in range(9)
            for x in range(9)
            if np.allclose(sample, padded[y : y + 48, x : x + 48], atol=1e-3)
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 10


def test_p0_is_identity() -> None:
    never = [
        A.RandomResizedCrop(size=(48, 48), scale=(0.5, 0.6), p=0.0),
        A.Affine(rotate=(-30, 30), translate_percent=(-0.2, 0.2), p=0.0),
        A.HorizontalFlip(p=0.0),
        A.RandomBrightnessContrast(p=0.0),
        A.CoarseDropout(p=0.0),
        A.Erasing(p=0.0),
    ]
    images = torch.randint(0, 256, (8, 1, 48, 48), dtype=torch.uint8)
    transform = BatchTransform.from_albumentations(never, SCALE01, 48, seed=0)
    assert torch.equal(transform(images, train=True), images.float() / 255)


def test_same_seed_repeats_and_other_seeds_differ() -> None:
    augmentation, normalise, size = from_config("strong")
    images = torch.randint(0, 256, (16, 1, 48, 48), dtype=torch.uint8)

    def run(seed: int) -> torch.Tensor:
        return BatchTransform.from_albumentations(augmentation, normalise, size, seed)(images, True)

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))
    transform = BatchTransform.from_albumentations(augmentation, normalise, size, 1)
    assert not torch.allclose(transform(images, True), transform(images, True))  # stream goes on


def test_randomness_is_per_sample() -> None:
    images = as_batch(*[smooth_face()] * 256)
    flipped = augment([A.HorizontalFlip(p=0.5)], images)[:, 0, 12, 6] < 200  # block moved away
    assert 0.35 < flipped.mean() < 0.65
    augmentation, normalise, size = from_config("keras_seed002")
    out = BatchTransform.from_albumentations(augmentation, normalise, size, 0)(images[:32], True)
    assert len(torch.unique(out.flatten(1), dim=0)) == 32


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_every_augmentation_config_builds_and_runs(name: str) -> None:
    augmentation, normalise, size = from_config(name)
    assert BatchTransform.supports(augmentation, normalise, size)
    transform = BatchTransform.from_albumentations(augmentation, normalise, size, seed=0)
    for source in (48, 40):
        out = transform(torch.randint(0, 256, (8, 1, source, source), dtype=torch.uint8), True)
        assert out.shape == (8, 1, size, size) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1  # scale01
    with pytest.raises(TypeError, match="uint8"):
        transform(torch.zeros(2, 1, 48, 48), True)


def test_a_512_image_batch_in_one_call() -> None:
    augmentation, normalise, size = from_config("strong", "preprocess=standardize")
    transform = BatchTransform.from_albumentations(augmentation, normalise, size, seed=0)
    images = torch.randint(0, 256, (1, 1, 48, 48), dtype=torch.uint8).expand(512, -1, -1, -1)
    out = transform(images, train=True)
    assert out.shape == (512, 1, 48, 48) and torch.isfinite(out).all()
    assert len(torch.unique(out.flatten(1), dim=0)) > 500


def test_coarse_dropout_blanks_one_hole_within_its_size_bounds() -> None:
    dropout = A.CoarseDropout(
        num_holes_range=(1, 1), hole_height_range=(0.1, 0.3), hole_width_range=(0.1, 0.3), p=1
    )
    out = augment([dropout], torch.full((64, 1, 48, 48), 255, dtype=torch.uint8))[:, 0]
    for sample in out:
        rows, cols = np.nonzero(sample == 0)
        assert len(rows) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # one rectangle
        assert int(0.1 * 48) <= np.ptp(rows) + 1 <= int(0.3 * 48)  # 4 .. 14 pixels a side
        assert int(0.1 * 48) <= np.ptp(cols) + 1 <= int(0.3 * 48)
    sizes = (out == 0).sum((1, 2))
    assert sizes.min() < 60 and sizes.max() > 120  # spread over the range, per sample


def test_coarse_dropout_in_pixels_several_holes_and_p() -> None:
    dropout = A.CoarseDropout(
        num_holes_range=(2, 3), hole_height_range=(4, 6), hole_width_range=(4, 6), fill=7, p=0.5
    )
    out = augment([dropout], torch.full((200, 1, 48, 48), 255, dtype=torch.uint8))[:, 0]
    filled = (out == 7).sum((1, 2))
    assert np.isin(out, [7, 255]).all()
    assert 0.35 < (filled > 0).mean() < 0.65
    assert filled[filled > 0].min() >= 4 * 4 + 1 and filled.max() <= 3 * 36


def test_erasing_blanks_a_fraction_of_the_image_within_its_scale() -> None:
    erasing = A.Erasing(scale=(0.1, 0.2), ratio=(0.5, 2.0), fill=0, p=1.0)
    out = augment([erasing], torch.full((64, 1, 48, 48), 255, dtype=torch.uint8))[:, 0]
    fraction = (out == 0).mean((1, 2))
    assert fraction.min() > 0.1 * 0.85 and fraction.max() < 0.2 * 1.15


@pytest.mark.parametrize("by_max", [True, False])
def test_brightness_contrast_matches_albumentations(by_max: bool) -> None:
    jitter = A.RandomBrightnessContrast((0.1, 0.1), (0.3, 0.3), brightness_by_max=by_max, p=1)
    image = smooth_face()
    np.testing.assert_allclose(
        augment([jitter], as_batch(image))[0, 0], albumentations([jitter], image), atol=1.01
    )


def test_unsupported_transforms_are_named_with_the_way_out() -> None:
    noise = A.GaussNoise(p=1.0)
    with pytest.raises(ValueError, match=r"GaussNoise.*data\.pipeline=per_sample"):
        BatchTransform.from_albumentations([A.HorizontalFlip(), noise], SCALE01, 48)
    assert not BatchTransform.supports([noise], SCALE01)
    assert "CLAHE" in BatchTransform.unsupported([], A.CLAHE(p=1.0))
    assert "fit_output" in BatchTransform.unsupported([A.Affine(fit_output=True)], SCALE01)
    assert BatchTransform.unsupported([A.HorizontalFlip()], SCALE01) is None
    too_small = [A.RandomResizedCrop(size=(40, 40))]
    assert BatchTransform.supports(too_small, SCALE01)  # sizes unchecked without image_size
    assert "image_size=48" in BatchTransform.unsupported(too_small, SCALE01, image_size=48)
