"""The Mutex Watershed (Wolf et al., ECCV 2018; TPAMI 2020) on an affinity map, by ``mwatershed``.

Edges: every pixel ``x`` and ``x + o`` for each offset ``o`` of the map (:mod:`unetpipe.affinities`;
channel ``k`` at ``x`` relates ``x`` and ``x + offsets[k]``). Nearest-neighbour channels are
attractive with weight ``a`` (the affinity), long-range channels repulsive with weight
``1 - a + bias`` (at least 0). All edges are taken in one order of decreasing weight: an
attractive edge merges its two clusters unless a repulsive edge already joins them (a mutex), a
repulsive edge adds a mutex unless they are merged. No seeds, no threshold; ``bias`` > 0 lets the
repulsive edges act earlier (more splits), < 0 later (more merges). ``stride`` keeps the
long-range edges of every ``stride``-th pixel along each axis only (Wolf et al.: fewer repulsive
edges, less over-segmentation, less time).

Every pixel with a positive attractive edge ends up in a cluster; ``mwatershed`` leaves a pixel
that joined nothing at 0, which unetpipe keeps as background. ``mask`` (optional, True = foreground)
cuts every edge that touches a background pixel, so those pixels stay 0.

Larger-than-memory volumes. The Mutex Watershed is global: the order of all edges decides each
merge, so blocks segmented on their own can disagree with the whole. unetpipe uses only schemes
that are exact: in ``2d`` mode each (y, x) slice is one problem (2D offsets, no edge between
slices), segmented whole and in parallel (Dask, one task per slice), its labels made distinct over
the stack -- identical to the whole stack in one call. In ``3d`` mode (3D offsets) the volume is
one problem, segmented in memory up to :data:`MAX_3D_VOXELS` voxels and refused above that (a
block-wise 3D scheme -- overlapping blocks stitched by overlap, or block fragments and a global
pass over their region graph -- is not implemented).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unetpipe.affinities import check_offsets, is_attractive, pair_slices

MAX_3D_VOXELS = 2**25
"""Largest volume segmented in ``3d`` mode (weights are float64: 8 bytes per voxel and offset)."""


def edge_weights(
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    bias: float = 0.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """``mwatershed``'s signed weights (float64, positive = attractive): ``a`` on the
    nearest-neighbour channels, ``-max(1 - a + bias, 0)`` on the long-range ones; 0 on every edge
    that touches a pixel outside ``mask`` (when given) or leaves the image."""
    affinities = np.asarray(affinities)
    offsets = check_offsets(offsets, affinities.ndim - 1)
    if affinities.shape[0] != len(offsets):
        raise ValueError(f"{affinities.shape[0]} affinity channels but {len(offsets)} offsets")
    weights = np.zeros(affinities.shape, np.float64)
    shape = affinities.shape[1:]
    inside = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    for k, offset in enumerate(offsets):
        a, b = pair_slices(shape, offset)
        value = affinities[k][a].astype(np.float64)
        if not is_attractive(offset):
            value = -np.maximum(1.0 - value + bias, 0.0)
        weights[k][a] = np.where(inside[a] & inside[b], value, 0.0)
    return weights


def mutex_watershed(
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    bias: float = 0.0,
    stride: int = 1,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Labels (int64, 0 = joined nothing or outside ``mask``) of one (K, *spatial) affinity map in
    [0, 1] with ``K`` = ``len(offsets)``; see the module docstring for the weights."""
    import mwatershed

    if stride < 1:
        raise ValueError(f"segment.stride must be at least 1, got {stride}")
    offsets = check_offsets(offsets, np.ndim(affinities) - 1)
    weights = edge_weights(affinities, offsets, bias, mask)
    shape = weights.shape[1:]
    # Offsets as long as the image have no edge (and mwatershed panics on them): left out.
    keep = [
        k for k, o in enumerate(offsets) if all(abs(v) < n for v, n in zip(o, shape, strict=True))
    ]
    if not keep:
        return np.zeros(shape, np.int64)  # no edge: every pixel joins nothing
    offsets = [offsets[k] for k in keep]
    dims = len(shape)
    strides = [[1] * dims if is_attractive(o) else [stride] * dims for o in offsets]
    labels = mwatershed.agglom(weights[keep], offsets, strides=strides if stride > 1 else None)
    return labels.astype(np.int64)
