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
merge, so blocks segmented on their own can disagree with the whole. In ``2d`` mode each (y, x)
slice is one problem (2D offsets, no edge between slices), segmented whole and in parallel (Dask,
one task per slice), its labels made distinct over the stack -- identical to the whole stack in
one call. In ``3d`` mode (3D offsets) the volume is one problem, segmented in memory up to
:data:`MAX_3D_VOXELS` voxels; larger volumes go block-wise (:func:`plan_blocks`,
:func:`blockwise`), overlapping blocks stitched by their overlap:

1. each block of a regular grid, grown by a halo of the longest offset along each axis, is
   segmented on its own (in parallel, one task each) and its labels kept for the whole grown box;
2. two face-adjacent blocks both labelled the overlap of their grown boxes; a label of one and a
   label of the other are the same object when they share at least half of each one's voxels in
   that overlap (:func:`overlap_matches`), and objects joined so are one (connected components
   of these matches over the whole volume);
3. every block writes its own voxels (not the halo) with the joined labels.

Only one grown block is in memory per task, the matches of two blocks per stitching task; the
grown blocks' labels wait in a scratch array. The result can differ from the whole volume's
where the order of edges beyond a halo would have decided; ``benchmarks/bench_mutex_blocks.py``
measures the disagreement (V_rand between the two partitions) and the peak memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import relabel_sequential, watershed

from unetpipe.affinities import check_offsets, is_attractive, pair_slices
from unetpipe.agglomerate import Runner, blocks_of, serial

MAX_3D_VOXELS = 2**23
"""Largest volume segmented whole in ``3d`` mode: measured 2.96 GiB peak for 10 x 512 x 512
voxels with 13 offsets (about 1.2 KiB a voxel), i.e. ~10 GiB here; larger volumes go by blocks
(``segment.mutex_block``)."""


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


def nearest_mean(affinities: np.ndarray, offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """The mean of the nearest-neighbour channels of an affinity map (a cell probability)."""
    nearest = [k for k, o in enumerate(offsets) if is_attractive(o)]
    return affinities[nearest].mean(axis=0)


def fill_unlabelled(
    labels: np.ndarray, affinities: np.ndarray, offsets: Sequence[Sequence[int]]
) -> np.ndarray:
    """``labels`` of one problem (a slice, or a 3D volume) with every 0 pixel (one that joined
    nothing, or an object dropped as too small) given to the object it is reached from first by
    a watershed flooding ``1 - `` the nearest-neighbour mean of ``affinities``: EM, where every
    pixel belongs to a cell and the membranes between cells are where the flooding meets.
    Unchanged when nothing is labelled."""
    if not labels.any() or labels.all():
        return labels
    return watershed(1.0 - nearest_mean(affinities, offsets), labels).astype(labels.dtype)


# --- block-wise, for volumes larger than memory ---------------------------------------------------


@dataclass(frozen=True)
class BlockPlan:
    """Blocks of a (z, y, x) volume: ``cores`` tile it, ``grown`` are the cores grown by ``halo``
    (clipped to the volume), ``scratch_shape`` holds every grown block's labels; ``pairs`` are
    the face-adjacent blocks ``(i, j)``, ``i < j``."""

    shape: tuple[int, ...]
    cores: list[tuple[tuple[int, ...], tuple[int, ...]]]
    grown: list[tuple[tuple[int, ...], tuple[int, ...]]]
    pairs: list[tuple[int, int]]
    scratch_shape: tuple[int, ...]


def plan_blocks(
    shape: Sequence[int], block: Sequence[int], offsets: Sequence[Sequence[int]]
) -> BlockPlan:
    """The :class:`BlockPlan` of a volume ``shape`` in blocks of ``block`` (z, y, x), grown by the
    longest offset along each axis (so every edge of a block's own voxels lies in its box)."""
    shape = tuple(int(n) for n in shape)
    block = tuple(int(b) for b in block)
    if len(block) != 3 or min(block) < 1:
        raise ValueError(f"segment.mutex_block must be 3 positive sizes (z, y, x), got {block}")
    offsets = check_offsets(offsets, 3)
    halo = [max(abs(o[d]) for o in offsets) for d in range(3)]
    cores = [(tuple(lo), tuple(hi)) for lo, hi in blocks_of(shape, block)]
    grown = [
        (
            tuple(max(0, a - h) for a, h in zip(lo, halo, strict=True)),
            tuple(min(n, b + h) for b, h, n in zip(hi, halo, shape, strict=True)),
        )
        for lo, hi in cores
    ]
    index = {lo: i for i, (lo, _) in enumerate(cores)}
    pairs = []
    for i, (lo, hi) in enumerate(cores):
        for d in range(3):
            after = tuple(hi[d] if e == d else lo[e] for e in range(3))
            if after in index:
                pairs.append((i, index[after]))
    longest = tuple(min(n, b + 2 * h) for b, h, n in zip(block, halo, shape, strict=True))
    return BlockPlan(shape, cores, grown, pairs, (len(cores), *longest))


def _box(lo: Sequence[int], hi: Sequence[int], origin: Sequence[int] = (0, 0, 0)) -> tuple:
    return tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin, strict=True))


def overlap_matches(first: np.ndarray, second: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Pairs ``(a, b)`` (an (n, 2) int64 array) of nonzero labels of two labellings of the same
    region that share at least ``fraction`` of the voxels of each of them in it (of the larger:
    a sliver of one object inside another is no match, which would chain mergers across blocks;
    against "of the smaller one", V_rand to the whole volume 0.84 vs 0.58 on ISBI slices 25-29,
    ``bench_mutex_blocks.py``)."""
    a, b = np.ravel(first).astype(np.int64), np.ravel(second).astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    size_a, size_b = np.bincount(a), np.bincount(b)
    larger = np.maximum(size_a[pairs[0]], size_b[pairs[1]])
    return pairs[:, counts >= fraction * larger].T


def blockwise(
    read: Callable[[Sequence[int], Sequence[int]], np.ndarray],
    plan: BlockPlan,
    offsets: Sequence[Sequence[int]],
    scratch: Any,
    bias: float = 0.0,
    stride: int = 1,
    mask_threshold: float | None = None,
    min_size: int = 0,
    run: Runner = serial,
) -> tuple[int, Callable[[Any], None]]:
    """The Mutex Watershed of a (z, y, x) volume by overlapping blocks (see the module
    docstring). ``read(lo, hi)`` returns the (K, z, y, x) affinities of a region; ``scratch``
    (numpy or Zarr, ``plan.scratch_shape``, an unsigned integer type, one chunk per block) keeps
    the grown blocks' labels. ``mask_threshold``: voxels whose nearest-neighbour mean is at most
    it stay background; without it every voxel is labelled (:func:`fill_unlabelled`, in each
    block). Objects under ``min_size`` voxels are dropped first. ``run`` maps a function over
    blocks (serially, or with Dask). Returns the number of objects and ``write(target)``, which
    writes labels 1..n (0 = background) into a (z, y, x) array."""
    offsets = check_offsets(offsets, 3)

    def segment(i: int) -> int:
        lo, hi = plan.grown[i]
        affinities = np.asarray(read(lo, hi), dtype=np.float32)
        mask = (
            None if mask_threshold is None else nearest_mean(affinities, offsets) > mask_threshold
        )
        labels = relabel_sequential(mutex_watershed(affinities, offsets, bias, stride, mask))[0]
        if labels.max() >= np.iinfo(scratch.dtype).max:
            raise ValueError(f"block {lo}..{hi} holds more objects than {scratch.dtype} counts")
        scratch[(i, *_box((0, 0, 0), labels.shape))] = labels
        return int(labels.max())

    def grown_labels(i: int, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        return np.asarray(scratch[(i, *_box(lo, hi, plan.grown[i][0]))], np.int64)

    def match(pair: tuple[int, int]) -> np.ndarray:
        i, j = pair
        lo = np.maximum(plan.grown[i][0], plan.grown[j][0])
        hi = np.minimum(plan.grown[i][1], plan.grown[j][1])
        found = overlap_matches(grown_labels(i, lo, hi), grown_labels(j, lo, hi))
        return found + [[first[i], first[j]]]

    counts = run(segment, range(len(plan.cores)))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # global id = first[i] + local label
    edges = np.concatenate([np.zeros((0, 2), np.int64), *run(match, plan.pairs)])
    n = int(np.sum(counts)) + 1  # id 0: background
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    component = connected_components(graph, directed=False)[1]

    def core_components(i: int) -> np.ndarray:
        local = grown_labels(i, *plan.cores[i])
        return np.where(local > 0, component[local + first[i]], -1)

    def sizes(i: int) -> np.ndarray:
        found = core_components(i)
        return np.bincount(found[found >= 0], minlength=int(component.max()) + 1)

    total = np.sum(run(sizes, range(len(plan.cores))), axis=0)
    kept = total >= max(min_size, 1)
    final = np.where(kept, np.cumsum(kept), 0)

    def write(target: Any) -> None:
        def one(i: int) -> None:
            found = core_components(i)
            labels = np.where(found >= 0, final[found.clip(0)], 0)
            if mask_threshold is None:
                affinities = np.asarray(read(*plan.cores[i]), dtype=np.float32)
                labels = fill_unlabelled(labels, affinities, offsets)
            target[_box(*plan.cores[i])] = labels

        run(one, range(len(plan.cores)))

    return int(kept.sum()), write


def mutex_watershed_blocks(
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    block: Sequence[int],
    bias: float = 0.0,
    stride: int = 1,
    mask_threshold: float | None = None,
    min_size: int = 0,
) -> np.ndarray:
    """:func:`blockwise` of an in-memory (K, z, y, x) affinity map: labels (int64, 0 =
    background) numbered 1..n."""
    plan = plan_blocks(affinities.shape[1:], block, offsets)
    scratch = np.zeros(plan.scratch_shape, np.uint32)
    _, write = blockwise(
        lambda lo, hi: affinities[(slice(None), *_box(lo, hi))],
        plan,
        offsets,
        scratch,
        bias,
        stride,
        mask_threshold,
        min_size,
    )
    labels = np.zeros(plan.shape, np.int64)
    write(labels)
    return labels
