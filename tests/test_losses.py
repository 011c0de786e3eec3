import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unetpipe.losses import AFFINITY_LOSSES, balanced_bce, dice_loss, weighted_cross_entropy


def test_hand_computed_value():
    # Pixel a: logits (0, ln 3) -> p_1 = 3/4, true class 1; pixel b: logits (0, 0) -> p_0 = 1/2.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    weights = torch.tensor([[[2.0, 1.0]]])
    expected = (2 * -math.log(3 / 4) + 1 * -math.log(1 / 2)) / 3
    loss = weighted_cross_entropy(logits, target, weights)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_unit_weights_give_unweighted_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 7, generator=generator)
    target = torch.randint(0, 3, (2, 5, 7), generator=generator)
    loss = weighted_cross_entropy(logits, target, torch.ones(2, 5, 7))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_weight_zero_pixels_are_ignored():
    logits = torch.tensor([[[[0.0, 0.0, -math.inf]], [[1.0, -2.0, 0.0]]]])
    target = torch.tensor([[[1, 0, 0]]])  # third pixel: an infinitely wrong prediction
    weights = torch.tensor([[[0.5, 1.5, 0.0]]])
    loss = weighted_cross_entropy(logits, target, weights)
    kept = weighted_cross_entropy(logits[..., :2], target[..., :2], weights[..., :2])
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(kept.item(), rel=1e-7)


def test_normalizer_replaces_the_weight_sum():
    logits = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    target = (logits[:, 1] > 0).long()
    weights = torch.full((1, 4, 4), 2.0)
    plain = weighted_cross_entropy(logits, target, weights)
    halved = weighted_cross_entropy(logits, target, weights, normalizer=64.0)
    assert halved.item() == pytest.approx(plain.item() / 2, rel=1e-6)


def test_gradient_matches_weighted_softmax_derivative():
    # dE/da_k(x) = w(x) (p_k(x) - [k == l(x)]) / sum w
    logits = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    target = torch.randint(0, 2, (1, 3, 3), generator=torch.Generator().manual_seed(3))
    weights = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(4))
    weighted_cross_entropy(logits, target, weights).backward()
    p = torch.softmax(logits.detach(), dim=1)
    onehot = F.one_hot(target, 2).permute(0, 3, 1, 2)
    expected = weights[:, None] * (p - onehot) / weights.sum()
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize(
    "shapes",
    [
        ((1, 2, 4, 4), (1, 4, 5), (1, 4, 5)),
        ((1, 2, 4, 4), (1, 4, 4), (1, 4, 5)),
        ((2, 4), (2,), (2,)),
    ],
)
def test_mismatched_shapes_raise(shapes):
    logits_shape, target_shape, weight_shape = shapes
    with pytest.raises(ValueError):
        weighted_cross_entropy(
            torch.zeros(logits_shape), torch.zeros(target_shape).long(), torch.ones(weight_shape)
        )


def _reference_affinity_losses(logits, target, valid):
    """Dice and balanced BCE channel by channel with numpy over the valid pixels only."""
    logits, target, valid = (np.asarray(a, np.float64) for a in (logits, target, valid))
    dice, bce = [], []
    for c in range(logits.shape[1]):
        keep = valid[:, c] > 0
        if not keep.any():
            continue
        z, t = logits[:, c][keep], target[:, c][keep]
        p = 1 / (1 + np.exp(-z))
        dice.append(1 - 2 * np.sum(p * t) / (np.sum(p * p) + np.sum(t * t)))
        losses = -(t * np.log(p) + (1 - t) * np.log(1 - p))
        means = [losses[t == v].mean() for v in (1, 0) if (t == v).any()]
        bce.append(np.mean(means))
    return np.mean(dice), np.mean(bce)


def test_affinity_losses_match_a_reference():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 6, 5, generator=generator)
    target = (torch.rand(2, 4, 6, 5, generator=generator) > 0.3).float()
    valid = torch.rand(2, 4, 6, 5, generator=generator) > 0.25
    valid[:, 2] = False  # a channel without valid pixels does not count
    target[:, 3] = 1.0  # a channel without negatives: the mean of its positives
    dice, bce = _reference_affinity_losses(logits, target, valid)
    assert dice_loss(logits, target, valid).item() == pytest.approx(dice, rel=1e-5)
    assert balanced_bce(logits, target, valid).item() == pytest.approx(bce, rel=1e-5)
    # Invalid pixels carry no gradient, whatever their values.
    logits.requires_grad_(True)
    for loss in AFFINITY_LOSSES.values():
        logits.grad = None
        loss(logits, target, valid).backward()
        assert (logits.grad[~valid] == 0).all() and (logits.grad[valid] != 0).any()


def test_affinity_losses_of_perfect_predictions_and_balance():
    target = torch.tensor([[[[1.0, 1.0, 1.0, 0.0]]]])
    valid = torch.ones_like(target, dtype=torch.bool)
    assert dice_loss(target * 40 - 20, target, valid).item() == pytest.approx(0.0, abs=1e-6)
    # Balanced: the one negative (p = 3/4, loss ln 4) weighs as much as the three positives
    # (p = 1/2, loss ln 2 each): (ln 2 + ln 4) / 2, not the pixel mean (3 ln 2 + ln 4) / 4.
    logits = torch.tensor([[[[0.0, 0.0, 0.0, math.log(3.0)]]]])
    expected = 1.5 * math.log(2)
    assert balanced_bce(logits, target, valid).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="offsets"):
        dice_loss(logits, target[..., :2], valid)
