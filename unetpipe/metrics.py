"""Segmentation measures of the paper's Section 4: ISBI 2012 (Rand, information, pixel error) and
the Cell Tracking Challenge (SEG, IoU of Table 2; DET, which counts the false positives SEG
ignores).

Definitions follow Arganda-Carreras et al. 2015 (Front. Neuroanat. 9:142), the ISBI 2012 challenge
paper, and its reference implementation (Fiji ``trainableSegmentation.metrics``): foreground-
restricted scores with the N^2 normalisation, where a pixel the segmentation leaves unassigned
(label 0) counts as a segment of its own. Everything is computed from the sparse contingency table
of two labelings (``numpy.bincount``), never object by object. Stacks are scored slice by slice as
the challenge does: :func:`slice_unique` makes the labels of different slices distinct, so one
pooled table holds the sums of all slices.

The warping error of Table 1 (Jain et al. 2010, as the ISBI 2012 leaderboard scored it) is at the
end: :func:`warping_error` and its threshold sweep :func:`warping_scores`.
"""

from __future__ import annotations

import heapq

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


_ERROR_KINDS = ("false_positive", "false_negative")


def interface_distance(target: ArrayLike) -> np.ndarray:
    """Each pixel's in-plane chessboard distance to the nearest pixel of the other class of
    ``target > 0`` (z, y, x): 1 = next to the cell / membrane interface (8-connected)."""
    truth = _stack(np.asarray(target) > 0)
    distance = np.zeros(truth.shape, np.int64)
    for z, plane in enumerate(truth):
        if plane.all() or not plane.any():
            raise ValueError(f"slice {z} of the target has one class only: no interface")
        distance[z] = np.where(
            plane,
            ndimage.distance_transform_cdt(plane, metric="chessboard"),
            ndimage.distance_transform_cdt(~plane, metric="chessboard"),
        )
    return distance


def pixel_errors_by_distance(
    cell: ArrayLike, target: ArrayLike, known: ArrayLike | None = None
) -> dict[str, np.ndarray | int]:
    """Where the pixel classification ``cell`` (bool, z, y, x) errs against ``target > 0``: each
    wrong pixel's :func:`interface_distance` in the truth.

    Returns ``false_positive`` (membrane called cell) and ``false_negative`` (cell called
    membrane) counts by distance (index d, d = 1 .. max), ``true_positive``, ``positive`` (truth
    cell pixels) and ``interface`` (truth cell pixels at distance 1), all over ``known`` pixels.
    :func:`pixel_error_beyond` turns them into the pixel error with the errors up to a distance
    forgiven."""
    cell, truth = _stack(np.asarray(cell, bool)), _stack(np.asarray(target) > 0)
    if cell.shape != truth.shape:
        raise ValueError(f"cell {cell.shape} and target {truth.shape} differ in shape")
    known = np.ones_like(truth) if known is None else _stack(np.asarray(known, bool))
    distance = interface_distance(truth)
    wrong = (cell != truth) & known
    size = int(distance[wrong].max(initial=0)) + 1
    return {
        "false_positive": np.bincount(distance[wrong & cell], minlength=size),
        "false_negative": np.bincount(distance[wrong & truth], minlength=size),
        "true_positive": int(np.count_nonzero(cell & truth & known)),
        "positive": int(np.count_nonzero(truth & known)),
        "interface": int(np.count_nonzero(truth & known & (distance == 1))),
    }


def pixel_error_beyond(errors: dict[str, np.ndarray | int], distance: int) -> float:
    """1 - F1 of the cell class (:func:`pixel_fscores`) counting only the errors of
    :func:`pixel_errors_by_distance` farther than ``distance`` from the truth's interface (0 = all
    errors: the plain pixel error); the forgiven pixels are left out, as in a tolerance band."""
    false = sum(int(np.asarray(errors[k])[distance + 1 :].sum()) for k in _ERROR_KINDS)
    denominator = 2 * int(errors["true_positive"]) + false
    return 1.0 - 2 * int(errors["true_positive"]) / denominator if denominator else 1.0


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


def thinned_v_rand(
    segmentation: ArrayLike, ground_truth: ArrayLike, known: ArrayLike | None = None
) -> float:
    """V_rand of a (z, y, x) labelling after the border thinning (:func:`thin_boundaries`) of it
    and of the ground truth, slices scored separately: the ISBI 2012 measure of an instance
    labelling, so the truth's membrane pixels count, each in the object it was thinned into.
    ``known``: where the truth is known (None: everywhere); objects thinned into other pixels
    are not scored there."""
    segments, truth = (thin_boundaries(slice_unique(x)) for x in (segmentation, ground_truth))
    if known is not None:
        truth = np.where(np.broadcast_to(known, truth.shape), truth, 0)
    return v_rand(segments, truth)


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


def _reference_table(
    segmentation: ArrayLike, reference: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The :func:`contingency` ``(r, s, n_rs)`` of (reference, segmentation) label images."""
    seg = _as_labels(segmentation, "segmentation")
    ref = _as_labels(reference, "reference")
    if seg.shape != ref.shape:
        raise ValueError(f"segmentation {seg.shape} and reference {ref.shape} differ in shape")
    return contingency(ref, seg)


def _matches(
    r: ArrayLike, s: ArrayLike, n: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
    """The CTC matching of a :func:`_reference_table`: ``(r, s, n, reference sizes, segment
    sizes, reference objects, match)``, ``match`` marking the entries with |R n S| > |R| / 2."""
    r, s, n = (np.asarray(x) for x in (r, s, n))
    ref_size = np.bincount(r, weights=n)
    seg_size = np.bincount(s, weights=n)
    objects = np.count_nonzero(ref_size[1:])
    if objects == 0:
        raise ValueError("the reference has no objects (all labels are 0)")
    match = (r > 0) & (s > 0) & (2 * n > ref_size[r])
    return r, s, n, ref_size, seg_size, objects, match


def seg_score(segmentation: ArrayLike, reference: ArrayLike) -> float:
    """The Cell Tracking Challenge SEG measure: a reference object R matches the segment S with
    |R n S| > |R| / 2 (at most one can); the score is the mean over reference objects of the
    Jaccard index |R n S| / |R u S| of their match, 0 when unmatched."""
    return seg_score_of_table(*_reference_table(segmentation, reference))


def seg_score_of_table(r: ArrayLike, s: ArrayLike, n: ArrayLike) -> float:
    """:func:`seg_score` from the :func:`contingency` ``(r, s, n_rs)`` of (reference,
    segmentation) over all pixels."""
    r, s, n, ref_size, seg_size, objects, match = _matches(r, s, n)
    jaccard = n[match] / (ref_size[r[match]] + seg_size[s[match]] - n[match])
    return float(jaccard.sum() / objects)


DET_WEIGHTS = {"splits": 5.0, "false_negatives": 10.0, "false_positives": 1.0}
"""The Cell Tracking Challenge's AOGM-D weights (Matula et al. 2015, PLoS ONE 10:e0144959): a
needed split operation 5, a missed reference object 10, a spurious segment 1."""


def det_score(segmentation: ArrayLike, reference: ArrayLike) -> float:
    """The Cell Tracking Challenge DET measure, with the SEG rule of matching (|R n S| > |R| / 2):
    1 - min(AOGM-D, AOGM-D0) / AOGM-D0, AOGM-D = 5 splits + 10 false negatives + 1 false positive
    (:data:`DET_WEIGHTS`), AOGM-D0 = 10 x the reference objects (building them all from nothing).
    A segment matching k > 1 reference objects needs k - 1 splits, a reference object without a
    match is a false negative, a segment matching none a false positive. The CTC scores DET against
    its tracking markers of every cell; here the reference is the instance truth."""
    return det_score_of_table(*_reference_table(segmentation, reference))


def det_score_of_table(r: ArrayLike, s: ArrayLike, n: ArrayLike) -> float:
    """:func:`det_score` from the :func:`contingency` ``(r, s, n_rs)`` of (reference,
    segmentation) over all pixels."""
    r, s, n, ref_size, seg_size, objects, match = _matches(r, s, n)
    matched = np.bincount(s[match], minlength=seg_size.size)[1:]  # references per segment
    w = DET_WEIGHTS
    aogm = (
        w["splits"] * np.maximum(matched - 1, 0).sum()
        + w["false_negatives"] * (objects - np.count_nonzero(match))
        + w["false_positives"] * np.count_nonzero((seg_size[1:] > 0) & (matched == 0))
    )
    empty = w["false_negatives"] * objects
    return float(1.0 - min(aogm, empty) / empty)


def op_csb(segmentation: ArrayLike, reference: ArrayLike) -> float:
    """The Cell Tracking Challenge's overall segmentation measure OP_CSB = (SEG + DET) / 2."""
    return op_csb_of_table(*_reference_table(segmentation, reference))


def op_csb_of_table(r: ArrayLike, s: ArrayLike, n: ArrayLike) -> float:
    """:func:`op_csb` from the :func:`contingency` ``(r, s, n_rs)``."""
    return (seg_score_of_table(r, s, n) + det_score_of_table(r, s, n)) / 2


def foreground_iou(segmentation: ArrayLike, reference: ArrayLike) -> float:
    """Intersection over union of the foregrounds ``segmentation > 0`` and ``reference > 0``
    (the IOU of the paper's Table 2)."""
    a, b = np.asarray(segmentation) > 0, np.asarray(reference) > 0
    if a.shape != b.shape:
        raise ValueError(f"segmentation {a.shape} and reference {b.shape} differ in shape")
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


# The warping error (Table 1's first column) ------------------------------------------------------

TOPOLOGICAL_ERRORS = (
    "split",
    "merger",
    "hole_addition",
    "hole_deletion",
    "object_addition",
    "object_deletion",
)
"""The classes of the pixels a topology-preserving warping cannot fix (Fiji ``WarpingError``)."""

_RING = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))
"""A pixel's 8 neighbours (dy, dx) in circular order from east; bit k of a code is ``_RING[k]``."""

_KIND = {name: k for k, name in enumerate(TOPOLOGICAL_ERRORS)}
_EIGHT_CONNECTED = {("merger", False), ("hole_addition", True)}  # (class, warped value): Fiji's
# clusterMismatchesByError joins these pixels 8-connected into one error, all others 4-connected
_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)


def neighbour_codes(mask: ArrayLike) -> np.ndarray:
    """The code of each pixel's 8 neighbours in a 2-D mask: bit k is set when neighbour ``_RING[k]``
    is foreground; outside the image is background."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    padded, (h, w) = np.pad(mask, 1), mask.shape
    codes = np.zeros(mask.shape, np.uint8)
    for k, (dy, dx) in enumerate(_RING):
        codes |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].astype(np.uint8) << k
    return codes


def _simple_point_table() -> np.ndarray:
    x = (np.arange(256)[:, None] >> np.arange(8)) & 1  # x[code, k] = neighbour k
    n4 = x - x * np.roll(x, -1, axis=1) * np.roll(x, -2, axis=1)
    return n4[:, ::2].sum(axis=1) == 1  # summed over the 4-neighbours (even k)


SIMPLE_POINT = _simple_point_table()
"""``SIMPLE_POINT[code]``: a pixel with neighbours ``code`` (:func:`neighbour_codes`) is simple,
i.e. flipping it changes no topology, for 4-connected foreground and 8-connected background:
Yokoi's connectivity number N4 = sum over the 4-neighbours k of x_k - x_k x_(k+1) x_(k+2)
(circular) is 1 (Yokoi, Toriwaki & Fukumura 1975). The centre's own value does not enter, so one
table serves both flips; it equals Fiji's ``WarpingError.simple2DBertrand(patch, 4)`` on all 256
codes."""


def _warp_slice(
    truth: np.ndarray, target: np.ndarray, priority: np.ndarray, movable: np.ndarray
) -> np.ndarray:
    """Fiji's ``simplePointWarp2d`` on one slice: passes over the pixels where ``truth`` differs
    from ``target`` (and ``movable``), in decreasing ``priority`` (ties in Fiji's column-major scan
    order), each flipped when it is simple in the current image, until a pass flips nothing.

    A pixel that failed keeps failing until a neighbour flips, so only those are tested again: a
    neighbour of the pixel of rank r that flips joins the current pass if its rank is above r and
    the next pass otherwise, the order in which Fiji's full rescans would reach it."""
    h, w = truth.shape
    stride = w + 2
    image = bytearray(np.pad(truth, 1).astype(np.uint8).tobytes())
    ys, xs = np.nonzero(movable & (truth != target))
    order = np.lexsort((ys, xs, -priority[ys, xs]))
    where = (ys[order] + 1) * stride + xs[order] + 1
    rank_of = np.full(len(image), -1, np.int64)
    rank_of[where] = np.arange(where.size)
    rank, where = rank_of.tolist(), where.tolist()
    offsets = [dy * stride + dx for dy, dx in _RING]
    e, ne, n, nw, west, sw, s, se = offsets
    simple = SIMPLE_POINT.tolist()
    queued, flipped = bytearray(b"\x01") * len(where), bytearray(len(where))
    heap = list(range(len(where)))  # sorted, so already a heap
    while heap:
        next_pass = []
        while heap:
            r = heapq.heappop(heap)
            queued[r] = 0
            i = where[r]
            code = (
                image[i + e]
                | image[i + ne] << 1
                | image[i + n] << 2
                | image[i + nw] << 3
                | image[i + west] << 4
                | image[i + sw] << 5
                | image[i + s] << 6
                | image[i + se] << 7
            )
            if simple[code]:
                image[i] ^= 1
                flipped[r] = 1
                for offset in offsets:
                    q = rank[i + offset]
                    if q >= 0 and not (flipped[q] or queued[q]):
                        queued[q] = 1
                        if q > r:
                            heapq.heappush(heap, q)
                        else:
                            next_pass.append(q)
        next_pass.sort()
        heap = next_pass
    return np.frombuffer(bytes(image), np.uint8).reshape(h + 2, w + 2)[1:-1, 1:-1].astype(bool)


def _splits_object(labels: np.ndarray, boxes: list, obj: int, y: int, x: int) -> bool:
    """Whether setting (y, x) to background leaves the pixels of object ``obj`` (4-connected
    ``labels``) among its 8 neighbours in two or more pieces. Fiji relabels the whole slice; the
    object's bounding box (``boxes`` of ``ndimage.find_objects``) grown by one pixel is enough."""
    rows, cols = boxes[obj - 1]
    y0, x0 = max(rows.start - 1, 0), max(cols.start - 1, 0)
    window = labels[y0 : rows.stop + 1, x0 : cols.stop + 1] == obj
    window[y - y0, x - x0] = False
    pieces = ndimage.label(window, structure=_FOUR)[0]
    around = pieces[max(y - y0 - 1, 0) : y - y0 + 2, max(x - x0 - 1, 0) : x - x0 + 2]
    return np.count_nonzero(np.unique(around)) >= 2


def _classify(warped: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """The class (index into :data:`TOPOLOGICAL_ERRORS`) of each pixel where the warped ground truth
    still differs from the prediction, -1 elsewhere, by Fiji's ``classifyMismatches2d`` over the
    whole slice (radius -1): from the 4-connected objects among the pixel's 8 neighbours inside the
    image, none (object addition or deletion), one without background (hole deletion or addition),
    one with background (a background pixel: hole addition; a foreground pixel: a split if its
    removal cuts the object there, else hole deletion), or more (merger or split)."""
    labels = components(warped)[0]
    ys, xs = np.nonzero(wrong)
    padded = np.pad(labels, 1, constant_values=-1)
    around = np.sort(np.stack([padded[ys + 1 + dy, xs + 1 + dx] for dy, dx in _RING], 1), 1)
    first = np.ones(around.shape, bool)
    first[:, 1:] = around[:, 1:] != around[:, :-1]
    distinct = np.count_nonzero(first & (around >= 0), axis=1)
    inside, obj = warped[ys, xs], around[:, -1]
    k = _KIND
    kind = np.where(inside, k["split"], k["merger"])
    alone = distinct == 1
    kind[alone] = np.where(
        obj[alone] > 0,
        np.where(inside[alone], k["hole_addition"], k["hole_deletion"]),
        np.where(inside[alone], k["object_deletion"], k["object_addition"]),
    )
    pair = distinct == 2
    kind[pair & ~inside] = k["hole_addition"]
    boxes = ndimage.find_objects(labels)
    for j in np.flatnonzero(pair & inside):
        cut = _splits_object(labels, boxes, int(obj[j]), int(ys[j]), int(xs[j]))
        kind[j] = k["split"] if cut else k["hole_deletion"]
    out = np.full(warped.shape, -1, np.int8)
    out[ys, xs] = kind
    return out


def warping_error(
    probability_or_binary: ArrayLike,
    ground_truth: ArrayLike,
    threshold: float = 0.5,
    mask_distance: float | None = None,
) -> dict[str, float]:
    """The topology-preserving warping error of Jain et al. 2010 (CVPR, "Boundary learning by
    optimization with topological constraints") as Fiji's ``trainableSegmentation.metrics.
    WarpingError`` computes it for the ISBI 2012 challenge, slice by slice, counts pooled.

    The binary ground truth (cells, ``ground_truth > 0`` = ISBI 255, the foreground, 4-connected;
    membranes and the outside of the image the background, 8-connected) is warped towards the
    prediction ``probability_or_binary > threshold`` (Fiji: ``<= t`` is 0) by flipping only simple
    points (:data:`SIMPLE_POINT`), the most confident disagreements (largest ``|p - t|``) first, in
    Fiji's order (:func:`_warp_slice`). The pixels still differing are classified as Fiji's
    ``classifyMismatches2d`` does (:data:`TOPOLOGICAL_ERRORS`). Returned:

    - ``warping_error``: (split + merger pixels) / all pixels, the "minimum splits and mergers
      warping error" of the ISBI 2012 leaderboard and of the paper's Table 1 at one threshold
      (Fiji ``getMetricValue(t, clusterByError=false)`` with flags MERGE + SPLIT);
    - ``mismatch_error``: all pixels still differing / all pixels, Jain's original measure
      (Fiji ``getMetricValue(t)``);
    - ``<class>_pixels`` and the number of errors ``<class>s`` (``splits``, ``mergers``, ...), the
      pixels of a class joined into one error when connected (Fiji ``clusterMismatchesByError``:
      8-connected for mergers and for hole additions at foreground pixels, else 4-connected).

    ``mask_distance``: only pixels within this Euclidean distance of the ground truth's background
    may flip (Jain et al. used 5); None (default) = no limit, as Fiji's documented ISBI use
    (``new WarpingError(labels, proposal)``, no mask). Unlike Fiji, which then ignores mismatches
    outside the mask, they are counted, as in Jain's definition. Fiji's ``radius`` only bounds the
    window of the split test; here it is the whole slice (Fiji's default, -1). Not confirmed: the
    challenge server's script (``challenge-error-metrics.bsh``) could not be read, so its
    thresholds, clustering and radius are those of Fiji's documentation (0.0-0.9, by type, -1).
    """
    prob = _stack(probability_or_binary)
    truth = _stack(_as_labels(ground_truth, "ground_truth")) > 0
    if prob.shape != truth.shape:
        raise ValueError(f"probability {prob.shape} and ground truth {truth.shape} differ")
    pixels, errors = dict.fromkeys(TOPOLOGICAL_ERRORS, 0), dict.fromkeys(TOPOLOGICAL_ERRORS, 0)
    for plane, gt in zip(prob.astype(np.float32), truth, strict=True):
        values = plane.astype(np.float64)  # Fiji: float pixels against a double threshold
        target = values > threshold
        priority = np.abs(values - threshold).astype(np.float32)
        movable = (
            np.ones(gt.shape, bool)
            if mask_distance is None
            else ndimage.distance_transform_edt(gt) <= mask_distance
        )
        warped = _warp_slice(gt, target, priority, movable)
        kind = _classify(warped, warped != target)
        for name, k in _KIND.items():
            pixels[name] += int(np.count_nonzero(kind == k))
            for value in (False, True):
                structure = _EIGHT if (name, value) in _EIGHT_CONNECTED else _FOUR
                errors[name] += ndimage.label((kind == k) & (warped == value), structure)[1]
    total = truth.size
    return {
        "warping_error": (pixels["split"] + pixels["merger"]) / total,
        "mismatch_error": sum(pixels.values()) / total,
        "pixels": total,
        **{f"{name}_pixels": count for name, count in pixels.items()},
        **{f"{name}s": count for name, count in errors.items()},
    }


def warping_scores(
    probability: ArrayLike,
    ground_truth: ArrayLike,
    thresholds: ArrayLike = ISBI_THRESHOLDS,
    mask_distance: float | None = None,
) -> dict[str, float]:
    """The ISBI 2012 warping error of a cell-probability map: the least :func:`warping_error` over
    the thresholds (the lowest of the best, as Fiji's ``getMinimumSplitsAndMergersErrorValue``),
    with its threshold and its numbers of splits and mergers (errors, not pixels). A threshold at
    which no pixel is a cell is left out (t = 1.0 for probabilities): deleting every object costs
    nothing in this measure, which would let any map score 0; Fiji's documented sweep stops at
    0.9."""
    prob = _stack(probability).astype(np.float32)
    top = float(prob.max()) if prob.size else -np.inf
    usable = [float(t) for t in _check_thresholds(thresholds) if top > t]
    if not usable:
        raise ValueError("no pixel of the prediction is above any threshold: nothing to warp onto")
    scores = [(t, warping_error(prob, ground_truth, t, mask_distance)) for t in usable]
    t, best = min(scores, key=lambda pair: pair[1]["warping_error"])
    return {
        "warping_error": best["warping_error"],
        "warping_error_threshold": t,
        "warping_splits": best["splits"],
        "warping_mergers": best["mergers"],
    }
