"""Test-time augmentation: the views of each mode, and predict_proba's average of their softmax,
checked against a network whose logits are known for an image and for its mirror."""

import math

import pytest
import torch
from torch import nn

from fer_lab.inference.tta import TTA_MODES, predict_proba, tta_views


class LeftMinusRight(nn.Module):
    """Logits [d, -d, 0], d = mean of the image's left half - mean of its right half, so the
    mirror of an image swaps the first two logits."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        half = images.shape[-1] // 2
        d = images[..., :half].mean(dim=(1, 2, 3)) - images[..., half:].mean(dim=(1, 2, 3))
        return torch.stack([d, -d, torch.zeros_like(d)], dim=1)


def halves(left: float, right: float) -> torch.Tensor:
    """A 1 x 4 x 6 image: `left` in its three left columns, `right` in the others."""
    image = torch.full((1, 4, 6), right)
    image[..., :3] = left
    return image


# Two batches of (images, labels), as a DataLoader yields them; d = 1.0, -0.5 and 2.0.
LOADER = [
    (torch.stack([halves(1.0, 0.0), halves(0.2, 0.7)]), torch.tensor([0, 1])),
    (torch.stack([halves(2.0, 0.0)]), torch.tensor([2])),
]
DIFFERENCES = [1.0, -0.5, 2.0]


def softmax(logits: list[float]) -> list[float]:
    total = sum(math.exp(v) for v in logits)
    return [math.exp(v) / total for v in logits]


def test_the_network_sees_the_mirror() -> None:
    images, _ = LOADER[0]
    logits = LeftMinusRight()(images)
    torch.testing.assert_close(logits, torch.tensor([[1.0, -1.0, 0.0], [-0.5, 0.5, 0.0]]))
    torch.testing.assert_close(LeftMinusRight()(images.flip(-1)), logits[:, [1, 0, 2]])


def test_no_tta_is_the_softmax_of_the_image() -> None:
    probabilities, labels = predict_proba(
        LeftMinusRight(), LOADER, "none", 1.125, torch.device("cpu")
    )
    expected = torch.tensor([softmax([d, -d, 0.0]) for d in DIFFERENCES])
    assert probabilities.shape == (3, 3)
    torch.testing.assert_close(probabilities, expected)
    assert labels.tolist() == [0, 1, 2]
    # d = 1: e / (e + 1/e + 1) = 0.66524, far from the hflip average below
    assert probabilities[0, 0].item() == pytest.approx(0.665241, abs=1e-6)


def test_hflip_averages_the_softmax_of_the_image_and_its_mirror() -> None:
    probabilities, labels = predict_proba(
        LeftMinusRight(), LOADER, "hflip", 1.125, torch.device("cpu")
    )
    expected = torch.tensor(
        [
            [(a + b) / 2 for a, b in zip(softmax([d, -d, 0.0]), softmax([-d, d, 0.0]), strict=True)]
            for d in DIFFERENCES
        ]
    )
    torch.testing.assert_close(probabilities, expected)
    assert labels.tolist() == [0, 1, 2]
    # Both views share the normaliser Z = e^d + e^-d + 1, so the first two classes tie at
    # (e^d + e^-d) / 2Z and the third keeps 1 / Z: for d = 1, 0.37764 and 0.24473.
    z = math.e + 1 / math.e + 1
    assert probabilities[0].tolist() == pytest.approx([(z - 1) / (2 * z)] * 2 + [1 / z])
    assert probabilities[0].tolist() == pytest.approx([0.377636, 0.377636, 0.244728], abs=1e-6)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3))


def test_tencrop_gives_ten_views_of_the_input_size() -> None:
    images = torch.rand(2, 3, 48, 40)
    views = tta_views(images, "tencrop", scale=1.125)
    assert len(views) == 10
    assert all(view.shape == (2, 3, 48, 40) for view in views)
    assert not torch.equal(views[0], views[3])  # different corners of a random image
    assert torch.equal(views[5], views[1].flip(-1))  # mirror's top-left: top-right mirrored


def test_tencrop_views_of_a_constant_image_are_the_image() -> None:
    images = torch.full((2, 3, 48, 48), 0.3)
    images[1] = 0.8
    images[:, 1] -= 0.1  # a constant per image and channel
    views = tta_views(images, "tencrop", scale=1.125)
    assert len(views) == 10
    for view in views:
        assert view.shape == images.shape
        torch.testing.assert_close(view, images)  # equal up to bilinear rounding (~1e-7)


def test_tencrop_of_constant_images_predicts_as_no_tta() -> None:
    loader = [(torch.full((2, 1, 8, 8), 0.5), torch.tensor([1, 0]))]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    plain, _ = predict_proba(net, loader, "none", 1.125, torch.device("cpu"))
    tencrop, _ = predict_proba(net, loader, "tencrop", 1.125, torch.device("cpu"))
    torch.testing.assert_close(tencrop, plain)
    torch.testing.assert_close(tencrop.sum(dim=1), torch.ones(2))


def test_modes() -> None:
    assert TTA_MODES == ("none", "hflip", "tencrop")
    assert [len(tta_views(torch.rand(1, 1, 8, 8), mode)) for mode in TTA_MODES] == [1, 2, 10]
