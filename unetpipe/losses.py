"""The training objective of the paper, Eq. 1: a pixel-wise soft-max over the final feature map
combined with a cross-entropy weighted by the precomputed weight map ``w`` (Eq. 2),

    E = - sum_x w(x) log p_l(x)(x),

normalised here by ``sum_x w(x)`` so that the scale of the loss (and of the learning rate) does not
depend on the tile size or on the weight map's magnitude. Pixels of weight 0 do not count.

Affinity networks (:mod:`unetpipe.affinities`) have one sigmoid channel per offset and no weight
map (Eq. 2 is a boundary-map device; the long-range channels do its work of separating touching
cells). Their losses, masked by ``valid`` (offsets that leave the tile, unknown truth), averaged
over the channels that have a valid pixel: :func:`dice_loss`, the Sorensen-Dice loss of Wolf et
al. (ECCV 2018), and :func:`balanced_bce`, binary cross-entropy with both classes weighted equally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    normalizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Eq. 1 averaged by the sum of the weights.

    ``logits`` (N, K, *spatial) are the network's outputs a_k(x); ``target`` (N, *spatial) the
    true class l(x) of each pixel; ``weights`` (N, *spatial) the weight map w(x) >= 0.
    ``normalizer`` replaces ``weights.sum()``: data-parallel training divides every process's
    partial sum by the weight sum of the whole batch (times the number of processes, whose
    gradients are averaged), so the result equals the loss of the batch in one process.
    """
    if logits.ndim < 3 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"logits (N, K, *spatial) {tuple(logits.shape)} and target (N, *spatial) "
            f"{tuple(target.shape)} do not match"
        )
    if weights.shape != target.shape:
        raise ValueError(f"weights {tuple(weights.shape)} differ from target {tuple(target.shape)}")
    log_p = F.log_softmax(logits.float(), dim=1)
    nll = F.nll_loss(log_p, target.long(), reduction="none")
    weights = weights.to(nll.dtype)
    # Weight-0 pixels are dropped, not multiplied: 0 * inf would be nan.
    total = (torch.where(weights > 0, nll, 0.0) * weights).sum()
    if normalizer is None:
        normalizer = weights.sum()
    return total / torch.clamp(torch.as_tensor(normalizer, dtype=nll.dtype), min=1e-12)


def _check_affinity_args(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
    if logits.ndim < 3 or target.shape != logits.shape or valid.shape != logits.shape:
        raise ValueError(
            f"logits, target and valid must all be (N, offsets, *spatial), got "
            f"{tuple(logits.shape)}, {tuple(target.shape)}, {tuple(valid.shape)}"
        )


def _per_channel(x: torch.Tensor) -> torch.Tensor:
    """Sums over batch and space: (N, C, *spatial) -> (C,)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).sum(dim=1)


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, eps: float = 1e-7
) -> torch.Tensor:
    """Masked Sorensen-Dice loss per channel, ``1 - 2 sum(p t) / (sum(p^2) + sum(t^2))`` over the
    valid pixels of the batch (p = sigmoid(logits), t the target affinity), averaged over the
    channels with a valid pixel (Wolf et al. 2018)."""
    _check_affinity_args(logits, target, valid)
    keep = valid.to(torch.float32)
    p = torch.sigmoid(logits.float()) * keep
    t = target.to(torch.float32) * keep
    numerator = 2 * _per_channel(p * t)
    denominator = _per_channel(p * p) + _per_channel(t * t)
    counted = _per_channel(keep) > 0
    if not counted.any():
        return logits.sum() * 0.0
    loss = 1 - numerator / torch.clamp(denominator, min=eps)
    return loss[counted].mean()


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Masked, class-balanced binary cross-entropy: per channel, the mean over its valid positive
    pixels and the mean over its valid negative ones, each with weight 1/2 (the mean of the one
    present when the other is absent); averaged over the channels with a valid pixel."""
    _check_affinity_args(logits, target, valid)
    t = target.to(torch.float32)
    bce = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    keep = valid.to(torch.float32)
    means, present = [], []
    for cls in (t, 1 - t):
        count = _per_channel(keep * cls)
        means.append(_per_channel(bce * keep * cls) / torch.clamp(count, min=1))
        present.append((count > 0).to(torch.float32))
    n = present[0] + present[1]
    counted = n > 0
    if not counted.any():
        return logits.sum() * 0.0
    loss = (means[0] * present[0] + means[1] * present[1]) / torch.clamp(n, min=1)
    return loss[counted].mean()


AFFINITY_LOSSES = {"dice": dice_loss, "bce": balanced_bce}
"""``train.affinity_loss`` -> the loss of an affinity network."""
