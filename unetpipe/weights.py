"""The weight map of Eq. 2 and the separation of touching cells (Section 3).

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``: ``w_c`` balances the class
frequencies, ``d1`` / ``d2`` are the distances to the nearest and second-nearest cell. As in the
authors' reference implementation the border term is put on background pixels only, which forces the
network to learn the thin separating borders between touching cells.

Instead of one full-image distance transform per cell, each cell's transform is restricted to its
bounding box grown by the distance beyond which the border term is below ``tolerance * w0``: outside
that box the cell cannot be one of the two nearest where the term matters, so the result is exact to
``tolerance * w0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

ClassWeights = str | Mapping[Any, float] | None


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer instance image (0 = background), got dtype {labels.dtype}"
        )
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative (0 = background, >0 = cell instances)")
    return labels


def class_weight_map(
    labels: np.ndarray, class_weights: ClassWeights = "balanced", known: np.ndarray | None = None
) -> np.ndarray:
    """``w_c`` of Eq. 2 for the classes background (0) and cell (``labels > 0``), float32.

    ``"balanced"``: inverse class frequency, scaled so that its mean over the image is 1;
    ``None``: 1 everywhere; a mapping ``{class: weight}`` (keys 0 and 1, ints or strings).
    ``known`` (boolean, default everywhere): the pixels the truth covers; the class frequencies
    are counted there only, and the weight is 0 elsewhere (not taught, e.g. unlabelled cells).
    """
    cells = np.asarray(labels) > 0
    known = np.ones(cells.shape, bool) if known is None else np.asarray(known, bool)
    if known.shape != cells.shape:
        raise ValueError(f"known {known.shape} and labels {cells.shape} differ in shape")
    if class_weights is None:
        return known.astype(np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f"class_weights must be balanced, None or a mapping: {class_weights!r}"
            )
        total = np.count_nonzero(known)
        counts = np.array(
            [total - np.count_nonzero(cells & known), np.count_nonzero(cells & known)]
        )
        present = np.count_nonzero(counts)
        per_class = np.divide(total, present * counts, out=np.zeros(2), where=counts > 0)
    else:
        given = {int(k): float(v) for k, v in class_weights.items()}
        if set(given) != {0, 1}:
            raise ValueError(f"class_weights needs the classes 0 and 1, got {sorted(given)}")
        per_class = np.array([given[0], given[1]])
    return np.where(known, per_class.astype(np.float32)[cells.astype(np.intp)], np.float32(0))


def border_margin(w0: float, sigma: float, tolerance: float) -> float:
    """Distance ``d1 + d2`` beyond which the border term is below ``tolerance * w0``."""
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    return sigma * math.sqrt(-2.0 * math.log(tolerance))


def _two_nearest(
    labels: np.ndarray, boxes: list, margin: float, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest cell, exact where ``d1 + d2 <= margin``.

    A cell only matters where it is at most ``margin - min(spacing)`` away (the other distance is at
    least one pixel), so its distance transform is computed in its bounding box grown by that much.
    """
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    reach = margin - min(spacing)
    grow = [math.ceil(reach / s) for s in spacing]
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        grown = tuple(
            slice(max(b.start - g, 0), min(b.stop + g, n))
            for b, g, n in zip(box, grow, labels.shape, strict=True)
        )
        dist = ndimage.distance_transform_edt(labels[grown] != index, sampling=spacing)
        near, second = d1[grown], d2[grown]
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    return d1, d2


def weight_map(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: ClassWeights = "balanced",
    *,
    tolerance: float = 1e-4,
    spacing: Sequence[float] | None = None,
    known: np.ndarray | None = None,
) -> np.ndarray:
    """The weight map of Eq. 2 for a 2D (or, with distances in 3D, 3D) instance-label image.

    Returns float32 ``w_c + border``, the border term ``w0 exp(-(d1 + d2)^2 / (2 sigma^2))`` on
    background pixels (0 on cells and where there are fewer than two cells), exact to
    ``tolerance * w0``. ``spacing`` is the pixel (voxel) size per axis, default 1. Where
    ``known`` is False (pixels the truth does not cover) the weight is 0.
    """
    labels = _check_labels(labels)
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"need w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * labels.ndim
    if len(spacing) != labels.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must be {labels.ndim} positive numbers, got {spacing}")
    weights = class_weight_map(labels, class_weights, known)
    if labels.size and labels.max() > labels.size:
        # Sparse ids: renumber 1..n so that find_objects gives one box per cell.
        ids, packed = np.unique(labels, return_inverse=True)
        labels = packed.reshape(labels.shape) + (0 if ids[0] == 0 else 1)
    boxes = ndimage.find_objects(labels)
    if w0 == 0 or sum(box is not None for box in boxes) < 2:
        return weights
    d1, d2 = _two_nearest(labels, boxes, border_margin(w0, sigma, tolerance), spacing)
    background = labels == 0 if known is None else (labels == 0) & np.asarray(known, bool)
    total = d1[background] + d2[background]
    weights[background] += (w0 * np.exp(-(total**2) / (2.0 * sigma**2))).astype(np.float32)
    return weights


def separate_instances(labels: np.ndarray, gap: int) -> np.ndarray:
    """Put a background gap ``gap`` pixels wide between touching cells (Section 3, Eq. 2).

    A cell pixel becomes background when another cell lies within Chebyshev distance ``ceil(gap/2)``
    (if that cell's label is higher) or ``floor(gap/2)`` (if lower), so each side of a contact gives
    up half the gap, the lower label the odd pixel: a straight contact becomes a band ``gap`` pixels
    wide. Cells farther than ``ceil(gap/2)`` apart are unchanged; for ``gap >= 1`` no two cells
    remain adjacent, even diagonally.
    """
    labels = _check_labels(labels)
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    out = labels.copy()
    if gap == 0:
        return out
    empty = np.iinfo(labels.dtype).max
    nonzero_min = np.where(labels > 0, labels, empty)
    remove = np.zeros(labels.shape, bool)
    higher_reach, lower_reach = (gap + 1) // 2, gap // 2
    remove |= ndimage.maximum_filter(labels, size=2 * higher_reach + 1) > labels
    if lower_reach:
        remove |= ndimage.minimum_filter(nonzero_min, size=2 * lower_reach + 1) < labels
    out[remove & (labels > 0)] = 0
    return out


def training_labels(group: Any, z: int) -> np.ndarray:
    """Slice ``z`` of the group's labels as the weight maps saw them: with the separation gap of
    the ``weights`` array (if any) put between touching cells, so that targets and weights agree."""
    gap = int(group["weights"].attrs.get("separation_gap", 0))
    return separate_instances(np.asarray(group["labels"][z]), gap)


def training_volume_labels(group: Any, start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` of the labels as the weight maps saw them (:func:`training_labels`):
    with ``weights.mode: 3d`` the separation gap is put in 3D, reading the slices it reaches
    beyond the range, else slice by slice."""
    height, width = group["labels"].shape[1:]
    return training_labels_box(group, (start, 0, 0), (stop, height, width))


def training_labels_box(group: Any, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
    """The labels of the box ``[start, stop)`` (z, y, x) as the weight maps saw them: the
    separation gap computed on the box and the pixels it reaches around it (in 3D with
    ``weights.mode: 3d``, else slice by slice), so that any box equals that crop of the whole
    stack's training labels."""
    attrs = group["weights"].attrs
    gap = int(attrs.get("separation_gap", 0))
    in_3d = attrs.get("mode") == "3d"
    reach = (gap + 1) // 2  # the wider of the two filters of separate_instances
    margins = (reach if in_3d else 0, reach, reach)
    shape = group["labels"].shape
    low = [max(0, a - m) for a, m in zip(start, margins, strict=True)]
    high = [min(n, b + m) for b, m, n in zip(stop, margins, shape, strict=True)]
    labels = np.asarray(group["labels"][tuple(map(slice, low, high))])
    if in_3d:
        separated = separate_instances(labels, gap)
    else:
        separated = np.stack([separate_instances(plane, gap) for plane in labels])
    return separated[
        tuple(slice(a - lo, b - lo) for a, b, lo in zip(start, stop, low, strict=True))
    ]
