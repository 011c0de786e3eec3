"""Segmentation measures of the paper's Section 4: ISBI 2012 (Rand, information, pixel error) and
the Cell Tracking Challenge (SEG, IoU of Table 2).

Definitions follow Arganda-Carreras et al. 2015 (Front. Neuroanat. 9:142), the ISBI 2012 challenge
paper, and its reference implementation (Fiji ``trainableSegmentation.metrics``): foreground-
restricted scores with the N^2 normalisation, where a pixel the segmentation leaves unassigned
(label 0) counts as a segment of its own. Everything is computed from the sparse contingency table
of two labelings (``numpy.bincount``), never object by object. Stacks are scored slice by slice as
the challenge does: :func:`slice_unique` makes the labels of different slices distinct, so one
pooled table holds the sums of all slices.

Not implemented: the warping error (Jain et al. 2010), which needs a topology-preserving
(simple-point) warping of the ground truth onto the prediction, which is not written here.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from skimage.segmentation import watershed

ISBI_THRESHOLDS = np.round(np.arange(11) * 0.1, 1)
"""The thresholds of the ISBI 2012 evaluation script: 0.0, 0.1, ..., 1.0 (cell is ``> t``)."""

_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected within a slice only


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels as small non-negative ids (0 stays 0) and the number of ids."""
    if labels.size == 0:
        return labels.astype(np.intp), 1
    if labels.min() < 0:
        raise ValueError("labels must be non-negative integers")
    top = int(labels.max())
    if top < 4 * labels.size + 1024:
        return labels.astype(np.intp, copy=False), top + 1
    values, ids = np.unique(labels, return_inverse=True)
    if values[0] != 0:  # keep id 0 for label 0
        ids += 1
    return ids.reshape(labels.shape), int(ids.max()) + 1


def _as_labels(x: ArrayLike, name: str) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise ValueError(f"{name} must be integer labels, got dtype {x.dtype}")
    return x


def contingency(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nonzero entries ``(i, j, n_ij)`` of the contingency table of two labelings.

    ``n_ij`` counts the pixels labelled ``i`` in ``a`` and ``j`` in ``b``; ``i`` and ``j`` are the
    labels themselves, or dense ids (0 kept for label 0) when the labels are too sparse to index.
    """
    a, b = _as_labels(a, "labels"), _as_labels(b, "labels")
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in shape: {a.shape} vs {b.shape}")
    ia, na = _dense_ids(a.ravel())
    ib, nb = _dense_ids(b.ravel())
    key = ia.astype(np.int64) * nb + ib
    if na * nb <= 4 * key.size + 1024:
        counts = np.bincount(key, minlength=na * nb)
        key = np.flatnonzero(counts)
        counts = counts[key]
    else:
        key, counts = np.unique(key, return_counts=True)
    return key // nb, key % nb, counts


def _foreground_table(
    segmentation: ArrayLike, ground_truth: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Over the ground-truth foreground: n_ij of the assigned pixels (segment j > 0) with the row
    sums t_i and column sums s_j, and the number of unassigned pixels (segment 0)."""
    seg = _as_labels(segmentation, "segmentation")
    gt = _as_labels(ground_truth, "ground_truth")
    if seg.shape != gt.shape:
        raise ValueError(f"segmentation {seg.shape} and ground truth {gt.shape} differ in shape")
    foreground = gt > 0
    if not foreground.any():
        raise ValueError("the ground truth has no foreground (all labels are 0)")
    return _foreground_sums(*contingency(gt[foreground], seg[foreground]))


def _foreground_sums(
    i: np.ndarray, j: np.ndarray, n: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """:func:`_foreground_table` from the contingency entries of the foreground pixels."""
    n = n.astype(np.float64)
    assigned = j > 0
    t = np.bincount(i, weights=n)
    s = np.bincount(j[assigned], weights=n[assigned])
    return n[assigned], t[t > 0], s[s > 0], float(n[~assigned].sum())


def v_rand_of_table(i: ArrayLike, j: ArrayLike, n: ArrayLike) -> float:
    """:func:`v_rand` from the :func:`contingency` ``(i, j, n_ij)`` of (ground truth,
    segmentation) over all pixels: the same value, without the pixels (for scoring many
    relabellings of one segmentation)."""
    i, j, n = (np.asarray(x) for x in (i, j, n))
    foreground = i > 0
    if not foreground.any():
        raise ValueError("the ground truth has no foreground (all labels are 0)")
    return _fscore(*_rand(*_foreground_sums(i[foreground], j[foreground], n[foreground])))


def _fscore(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def rand_scores(segmentation: ArrayLike, ground_truth: ArrayLike) -> tuple[float, float]:
    """Foreground-restricted Rand scores (merge, split), Arganda-Carreras et al. 2015, Eq. 3.

    Over the pixels where ``ground_truth > 0``, with ``n_ij`` their contingency table (i = true
    object, j = segment) and ``t_i``, ``s_j`` its row and column sums:
    merge (precision) = sum n_ij^2 / sum s_j^2, split (recall) = sum n_ij^2 / sum t_i^2.
    Unassigned pixels (segment 0) are singletons, each adding 1 to both sums over j.
    """
    return _rand(*_foreground_table(segmentation, ground_truth))


def _rand(n: np.ndarray, t: np.ndarray, s: np.ndarray, unassigned: float) -> tuple[float, float]:
    sum_n2 = n @ n + unassigned
    return float(sum_n2 / (s @ s + unassigned)), float(sum_n2 / (t @ t))


def v_rand(segmentation: ArrayLike, ground_truth: ArrayLike) -> float:
    """V_rand: the F-score of the foreground-restricted Rand scores (ISBI 2012; 1 = perfect).

    Merging true objects lowers the merge score (precision), splitting them the split score.
    """
    return _fscore(*rand_scores(segmentation, ground_truth))


def _entropy(p: np.ndarray) -> float:
    return float(-(p @ np.log(p)))


def info_scores(segmentation: ArrayLike, ground_truth: ArrayLike) -> tuple[float, float]:
    """Foreground-restricted information scores (merge, split), Arganda-Carreras et al. 2015:
    merge = I(S;T) / H(T), split = I(S;T) / H(S) (S = segmentation, T = ground truth), with the
    probabilities n_ij / N over the ground-truth foreground and unassigned pixels as singletons.
    """
    return _info(*_foreground_table(segmentation, ground_truth))


def _info(n: np.ndarray, t: np.ndarray, s: np.ndarray, unassigned: float) -> tuple[float, float]:
    total = t.sum()
    singletons = unassigned / total * np.log(total)  # -u * (1/N) log(1/N)
    h_seg = _entropy(s / total) + singletons
    h_true = _entropy(t / total)
    mutual = h_seg + h_true - (_entropy(n / total) + singletons)
    return (
        1.0 if h_true == 0 else float(mutual / h_true),
        1.0 if h_seg == 0 else float(mutual / h_seg),
    )


def v_info(segmentation: ArrayLike, ground_truth: ArrayLike) -> float:
    """V_info: 2 I(S;T) / (H(S) + H(T)), the F-score of :func:`info_scores` (1 = perfect)."""
    return _fscore(*info_scores(segmentation, ground_truth))


def pixel_fscores(
    probability: ArrayLike, target: ArrayLike, thresholds: ArrayLike = ISBI_THRESHOLDS
) -> np.ndarray:
    """F1 of the pixel classification ``probability > t`` against ``target > 0``, for each t."""
    prob, positive = np.asarray(probability), np.asarray(target) > 0
    if prob.shape != positive.shape:
        raise ValueError(f"probability {prob.shape} and target {positive.shape} differ in shape")
    thresholds = _check_thresholds(thresholds)
    # rank = how many thresholds lie below the pixel: it is positive for t_0 .. t_(rank-1)
    rank = np.searchsorted(thresholds, prob.ravel(), side="left")
    bins = thresholds.size + 1
    true_by_rank = np.bincount(rank, weights=positive.ravel(), minlength=bins)
    all_by_rank = np.bincount(rank, minlength=bins)
    true_positive = np.cumsum(true_by_rank[::-1])[::-1][1:]
    predicted = np.cumsum(all_by_rank[::-1])[::-1][1:]
    denominator = predicted + positive.sum()
    return np.divide(2 * true_positive, denominator, out=np.zeros(bins - 1), where=denominator > 0)


def pixel_error(
    probability: ArrayLike, target: ArrayLike, thresholds: ArrayLike = ISBI_THRESHOLDS
) -> float:
    """Pixel error of the paper's Table 1: 1 - the best F1 of the pixel classification.

    Cells (``probability > t``) are the positive class against ``target > 0``, counts pooled over
    all pixels, the best over ``thresholds`` (those of the ISBI 2012 script).
    """
    return 1.0 - float(pixel_fscores(probability, target, thresholds).max())


def _check_thresholds(thresholds: ArrayLike) -> np.ndarray:
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or np.any(np.diff(thresholds) <= 0):
        raise ValueError("thresholds must be a non-empty increasing 1-D sequence")
    return thresholds


def _stack(x: ArrayLike) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected a slice (y, x) or a stack (z, y, x), got shape {x.shape}")
    return x[None] if x.ndim == 2 else x


def slice_unique(labels: ArrayLike) -> np.ndarray:
    """Labels of a (z, y, x) stack made distinct between slices (0 stays 0), so that a measure of
    the whole stack pools the slices' tables as the ISBI script does instead of joining objects
    across slices."""
    labels = _stack(_as_labels(labels, "labels"))
    ids, count = _dense_ids(labels.ravel())
    z = np.repeat(np.arange(labels.shape[0], dtype=np.int64), labels[0].size)
    unique = np.where(ids > 0, z * count + ids, 0)
    return _dense_ids(unique)[0].reshape(labels.shape)


def components(mask: ArrayLike) -> np.ndarray:
    """4-connected components of each slice of a (z, y, x) mask, labels distinct over the stack."""
    return ndimage.label(_stack(mask), structure=_IN_PLANE)[0]


def thin_boundaries(labels: ArrayLike) -> np.ndarray:
    """Thin the background between objects to 1-pixel lines, slice by slice: every object grows
    into the background (seeded watershed of the distance to the objects) until it meets another;
    the meeting lines stay 0. This is the border thinning of the ISBI 2012 evaluation, which makes
    the scores insensitive to the width of the membranes."""
    labels = _stack(_as_labels(labels, "labels"))
    out = np.zeros(labels.shape, np.int64)
    for z, plane in enumerate(labels):
        if plane.any():
            distance = ndimage.distance_transform_edt(plane == 0)
            out[z] = watershed(distance, plane, watershed_line=True)
    return out


def isbi_scores(
    probability: ArrayLike,
    ground_truth: ArrayLike,
    thresholds: ArrayLike = ISBI_THRESHOLDS,
    thinning: bool = True,
) -> dict[str, float]:
    """The ISBI 2012 protocol on a cell-probability map: for each threshold t, the 4-connected
    components of ``probability > t`` in each slice; both they and the ground truth's objects are
    border-thinned (``thinning``); the best V_rand and the best V_info over the thresholds, each
    with its threshold, pooled over slices. ``rand_error = 1 - v_rand`` (the paper's Table 1)."""
    prob = _stack(probability)
    truth = _stack(_as_labels(ground_truth, "ground_truth"))
    if prob.shape != truth.shape:
        raise ValueError(f"probability {prob.shape} and ground truth {truth.shape} differ")
    thresholds = _check_thresholds(thresholds)
    truth = slice_unique(truth)
    if thinning:
        truth = thin_boundaries(truth)
    rand, info = [], []
    for t in thresholds:
        segments = components(prob > t)
        if thinning:
            segments = thin_boundaries(segments)
        table = _foreground_table(segments, truth)
        rand.append(_fscore(*_rand(*table)))
        info.append(_fscore(*_info(*table)))
    best_rand, best_info = int(np.argmax(rand)), int(np.argmax(info))
    return {
        "v_rand": rand[best_rand],
        "v_rand_threshold": float(thresholds[best_rand]),
        "rand_error": 1.0 - rand[best_rand],
        "v_info": info[best_info],
        "v_info_threshold": float(thresholds[best_info]),
    }


def slice_v_rand(
    probability: ArrayLike, ground_truth: ArrayLike, thresholds: ArrayLike = ISBI_THRESHOLDS
) -> tuple[float, float]:
    """A quick validation figure: the mean over slices of V_rand of the 4-connected components of
    ``probability > t`` (no thinning), at the threshold t that maximises that mean; (score, t)."""
    prob = _stack(probability)
    truth = _stack(_as_labels(ground_truth, "ground_truth"))
    if prob.shape != truth.shape:
        raise ValueError(f"probability {prob.shape} and ground truth {truth.shape} differ")
    thresholds = _check_thresholds(thresholds)
    pairs = list(zip(prob, truth, strict=True))
    means = [np.mean([v_rand(components(p > t)[0], g) for p, g in pairs]) for t in thresholds]
    best = int(np.argmax(means))
    return float(means[best]), float(thresholds[best])


def seg_score(segmentation: ArrayLike, reference: ArrayLike) -> float:
    """The Cell Tracking Challenge SEG measure: a reference object R matches the segment S with
    |R n S| > |R| / 2 (at most one can); the score is the mean over reference objects of the
    Jaccard index |R n S| / |R u S| of their match, 0 when unmatched."""
    seg = _as_labels(segmentation, "segmentation")
    ref = _as_labels(reference, "reference")
    if seg.shape != ref.shape:
        raise ValueError(f"segmentation {seg.shape} and reference {ref.shape} differ in shape")
    return seg_score_of_table(*contingency(ref, seg))


def seg_score_of_table(r: ArrayLike, s: ArrayLike, n: ArrayLike) -> float:
    """:func:`seg_score` from the :func:`contingency` ``(r, s, n_rs)`` of (reference,
    segmentation) over all pixels."""
    r, s, n = (np.asarray(x) for x in (r, s, n))
    ref_size = np.bincount(r, weights=n)
    seg_size = np.bincount(s, weights=n)
    objects = np.count_nonzero(ref_size[1:])
    if objects == 0:
        raise ValueError("the reference has no objects (all labels are 0)")
    match = (r > 0) & (s > 0) & (2 * n > ref_size[r])
    jaccard = n[match] / (ref_size[r[match]] + seg_size[s[match]] - n[match])
    return float(jaccard.sum() / objects)


def foreground_iou(segmentation: ArrayLike, reference: ArrayLike) -> float:
    """Intersection over union of the foregrounds ``segmentation > 0`` and ``reference > 0``
    (the IOU of the paper's Table 2)."""
    a, b = np.asarray(segmentation) > 0, np.asarray(reference) > 0
    if a.shape != b.shape:
        raise ValueError(f"segmentation {a.shape} and reference {b.shape} differ in shape")
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union
