"""Mixup and CutMix: what the mixed batch and lam are, the seeded draws, the config, the loss,
and that mixing a batch makes no host sync."""

import pytest
import torch
from hydra.utils import instantiate
from torch.nn import functional as F

from fer_lab.training.mixing import BatchMix, mixed_loss

from .helpers import compose_config

MODES = {"mixup": {"mixup_alpha": 0.4}, "cutmix": {"cutmix_alpha": 1.0}}
MODES["both"] = {**MODES["mixup"], **MODES["cutmix"]}


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i + 1, so every pixel tells whose it is."""
    images = torch.arange(1.0, n + 1).view(n, 1, 1, 1).expand(n, 1, 48, 48).clone()
    return images, torch.arange(n) % 7


@pytest.mark.parametrize("mode", MODES)
def test_shapes_labels_and_lam(mode: str) -> None:
    images, labels = batch()
    mix = BatchMix(**MODES[mode], seed=1)
    for _ in range(20):
        mixed, labels_a, labels_b, lam = mix(images, labels)
        assert mixed.shape == images.shape and mixed.dtype == images.dtype
        assert torch.equal(labels_a, labels) and torch.equal(labels_b, labels.flip(0))
        assert lam.shape == () and lam.device == images.device and lam.is_floating_point()
        assert 0 <= lam <= 1


def test_mixup_blends_each_image_with_its_partner_by_lam() -> None:
    images, labels = batch()
    mixed, _, _, lam = BatchMix(mixup_alpha=0.4, seed=3)(images, labels)
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    assert 0 < lam < 1


def test_cutmix_pastes_one_box_whose_area_gives_lam() -> None:
    images, labels = batch()
    partners = images.flip(0)
    lams = []
    for seed in range(30):
        mixed, _, _, lam = BatchMix(cutmix_alpha=1.0, seed=seed)(images, labels)
        kept = mixed == images
        assert torch.equal(mixed[~kept], partners[~kept])  # the rest is the partner's
        cut = ~kept[0, 0]
        assert torch.equal(kept, kept[:1].expand_as(kept))  # the same box in every image
        rows, cols = cut.any(1), cut.any(0)
        assert torch.equal(cut, rows[:, None] & cols[None, :])  # a rectangle
        assert lam == kept[0].float().mean()  # lam is the true share left, edges included
        lams.append(float(lam))
    assert min(lams) < 0.5 < max(lams) < 1  # boxes of many sizes, some of them cut off


def test_both_kinds_are_drawn_by_switch_prob() -> None:
    images, labels = batch()
    mix = BatchMix(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.5, seed=0)
    cut = sum(bool((mix(images, labels)[0] == images).any()) for _ in range(40))
    assert 5 < cut < 35  # cutmix keeps pixels as they were; mixup changes every one


@pytest.mark.parametrize("mode", MODES)
def test_prob_zero_leaves_the_batch_as_it_was(mode: str) -> None:
    images, labels = batch()
    images = images + torch.rand_like(images)  # values that a blend would not give back
    mix = BatchMix(**MODES[mode], prob=0.0, seed=0)
    for _ in range(5):
        mixed, labels_a, _, lam = mix(images, labels)
        assert torch.equal(mixed, images) and torch.equal(labels_a, labels) and lam == 1


def test_prob_mixes_that_share_of_batches() -> None:
    images, labels = batch()
    mix = BatchMix(mixup_alpha=0.4, prob=0.5, seed=0)
    mixed = sum(bool(mix(images, labels)[3] < 1) for _ in range(40))
    assert 10 < mixed < 30


@pytest.mark.parametrize("mode", MODES)
def test_the_seed_fixes_the_draws(mode: str) -> None:
    images, labels = batch()
    runs = [BatchMix(**MODES[mode], seed=seed) for seed in (7, 7, 8)]
    outputs = [[mix(images, labels)[3] for _ in range(5)] for mix in runs]
    assert torch.equal(torch.stack(outputs[0]), torch.stack(outputs[1]))
    assert not torch.equal(torch.stack(outputs[0]), torch.stack(outputs[2]))


@pytest.mark.parametrize("mode", MODES)
def test_mixing_never_reads_a_value_back_to_the_host(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU each of these calls waits for the device; none may happen while mixing."""
    images, labels = batch()
    mix = BatchMix(**MODES[mode], prob=0.7, seed=0)

    def host_sync(*args: object, **kwargs: object) -> None:
        raise AssertionError("a host sync while mixing")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, host_sync)
    monkeypatch.setattr(torch.Tensor, "numpy", host_sync)
    for _ in range(5):
        mix(images, labels)


def test_mixed_loss_weighs_both_labels_by_lam() -> None:
    logits = torch.randn(6, 7, generator=torch.Generator().manual_seed(0))
    labels_a, labels_b = torch.arange(6), torch.arange(6).flip(0)
    lam = torch.tensor(0.3)
    loss = mixed_loss(F.cross_entropy, logits, labels_a, labels_b, lam)
    soft = lam * F.one_hot(labels_a, 7) + (1 - lam) * F.one_hot(labels_b, 7)
    torch.testing.assert_close(loss, F.cross_entropy(logits, soft))  # cross-entropy is linear
    one = mixed_loss(F.cross_entropy, logits, labels_a, labels_b, torch.tensor(1.0))
    assert torch.equal(one, F.cross_entropy(logits, labels_a))


def test_configs_build_the_mixer_from_the_run_seed() -> None:
    assert compose_config("dataset=synthetic", "mixing=none").mixing is None
    cfg = compose_config("dataset=synthetic", "mixing=mixup", "seed=5")
    mixup = instantiate(cfg.mixing)
    assert isinstance(mixup, BatchMix) and (mixup.mixup_alpha, mixup.cutmix_alpha) == (0.2, 0)
    assert mixup.seed == 5
    cutmix = instantiate(compose_config("dataset=synthetic", "mixing=cutmix").mixing)
    assert (cutmix.mixup_alpha, cutmix.cutmix_alpha) == (0, 1.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "mixing=none"),
        ({"mixup_alpha": -1}, r"mixing\.mixup_alpha"),
        ({"cutmix_alpha": 1, "prob": 1.5}, r"mixing\.prob"),
        ({"cutmix_alpha": 1, "switch_prob": -0.1}, r"mixing\.switch_prob"),
    ],
)
def test_bad_settings_name_their_key(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchMix(**settings)
