"""Losses: seed 002's class weights, seed 003's MSE on softmax, label smoothing."""

import math

import pytest
import torch
from hydra.utils import instantiate

from fer_lab.training.losses import CrossEntropyLoss, MSEOneHotLoss, capped_inverse_frequency

from .helpers import compose_config


def test_seed002_class_weights_are_capped_inverse_frequencies() -> None:
    # Seed 002's class counts (anger, contempt, ..., surprise in alphabetical order).
    weights = capped_inverse_frequency([252, 9, 208, 21, 5697, 6868, 268, 368], cap=3.0)
    assert weights[5] == 1.0
    assert weights[4] == pytest.approx(6868 / 5697)
    assert weights[[0, 1, 2, 3, 6, 7]].tolist() == [3.0] * 6


def test_absent_class_gets_the_cap_instead_of_infinity() -> None:
    assert capped_inverse_frequency([10, 0], cap=3.0).tolist() == [1.0, 3.0]


def test_weighted_cross_entropy_differs_from_plain() -> None:
    logits, target = torch.randn(16, 3), torch.tensor([0] * 14 + [1, 2])
    plain = CrossEntropyLoss([14, 1, 1])(logits, target)
    weighted = CrossEntropyLoss([14, 1, 1], max_class_weight=3.0)(logits, target)
    assert plain == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item())
    assert weighted != pytest.approx(plain.item())


def test_mse_onehot_is_mse_between_softmax_and_onehot() -> None:
    logits, target = torch.randn(5, 7), torch.tensor([0, 1, 2, 3, 6])
    expected = torch.nn.functional.mse_loss(
        logits.softmax(1), torch.nn.functional.one_hot(target, 7).float()
    )
    assert MSEOneHotLoss([1] * 7)(logits, target).item() == pytest.approx(expected.item())


def test_label_smoothing_is_applied() -> None:
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    smooth = CrossEntropyLoss([2, 1, 1], label_smoothing=0.1)(logits, target)
    expected = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    assert smooth.item() == pytest.approx(expected.item())


def test_weighted_cross_entropy_matches_torch_with_hand_computed_weights() -> None:
    """conf/loss/cross_entropy_weighted.yaml: weights min(max_count / count, 3) from the
    training split's counts, here 6, 3 and 1 images: 6/6 = 1, 6/3 = 2, 6/1 = 6 capped to 3."""
    loss = instantiate(compose_config("loss=cross_entropy_weighted").loss, class_counts=[6, 3, 1])
    assert isinstance(loss, CrossEntropyLoss)
    assert loss.class_weights.tolist() == [1.0, 2.0, 3.0]

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [0.3, -0.2, 1.5], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 1, 2, 1])
    weights = torch.tensor([1.0, 2.0, 3.0])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)

    # The same by hand: the weighted mean of -log softmax at the label.
    nll = [
        -math.log(math.exp(row[y]) / sum(math.exp(v) for v in row))
        for row, y in zip(logits.tolist(), labels.tolist(), strict=True)
    ]
    w = [weights[y].item() for y in labels.tolist()]  # 1, 2, 3, 2
    by_hand = sum(wi * li for wi, li in zip(w, nll, strict=True)) / sum(w)
    assert loss(logits, labels).item() == pytest.approx(by_hand, rel=1e-6)
    # and not the unweighted mean
    assert by_hand != pytest.approx(sum(nll) / 4, rel=1e-3)


@pytest.mark.parametrize(("model", "regularized"), [("tf_emotion_cnn", True), ("convnet0", False)])
def test_logged_losses_are_data_losses_and_the_l2_term_is_logged_apart(
    model: str, regularized: bool
) -> None:
    """val/test/train loss stay comparable with a plain cross-entropy; seed 001's L2 term is
    optimised and logged as train/reg_loss."""
    from fer_lab.training.metrics import TrainingTally

    from .test_gpu_path import training_module

    module = training_module(model).eval()  # one dropout-free forward for both losses
    module.tally = TrainingTally(next(module.net.parameters()))
    images, labels = torch.rand(4, 1, 48, 48), torch.tensor([0, 1, 2, 3])
    objective = module.training_step((images, labels), 0)
    with torch.no_grad():
        data_loss = torch.nn.functional.cross_entropy(module(images), labels)
    logged = module.tally.means(module.tally.state.tolist())
    assert logged["train/loss"] == pytest.approx(float(data_loss), rel=1e-5)
    if regularized:
        l2 = float(logged["train/reg_loss"])
        assert l2 > 0 and float(objective) == pytest.approx(float(data_loss) + l2, rel=1e-5)
    else:
        assert logged["train/reg_loss"] == 0
        assert float(objective) == pytest.approx(float(data_loss), rel=1e-5)
