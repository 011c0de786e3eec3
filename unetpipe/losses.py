"""The training objective of the paper, Eq. 1: a pixel-wise soft-max over the final feature map
combined with a cross-entropy weighted by the precomputed weight map ``w`` (Eq. 2),

    E = - sum_x w(x) log p_l(x)(x),

normalised here by ``sum_x w(x)`` so that the scale of the loss (and of the learning rate) does not
depend on the tile size or on the weight map's magnitude. Pixels of weight 0 do not count.
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
