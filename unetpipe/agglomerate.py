"""Supervoxels of a boundary map and their agglomeration by mean boundary probability, block-wise.

The field's standard for instances from a boundary map (Zlateski & Seung 2015, arXiv 1505.00249;
Funke et al. 2019, TPAMI 41:1669, ``waterz``): a watershed of the boundary probability
``b = 1 - p`` into supervoxels, then the neighbouring supervoxels whose shared face has the lowest
mean boundary probability are merged first, the merged faces' means updated, until the lowest mean
reaches a threshold.

Watershed: the drop-of-water principle (Cousty et al. 2009, PAMI 31:1362): every pixel flows to
the lowest of its 4- (2D) or 6- (3D) neighbours in the relief, ties broken by the global raster
index, and a supervoxel is the set of pixels draining into one minimum. The relief is the boundary
map smoothed by a Gaussian (``relief="probability"``; its minima are the seeds), or minus the
distance to the background of ``p > threshold``, capped at ``max_distance`` px, plus that smoothed
map (``relief="distance"``; the seeds are the distance transform's maxima). A face between two
supervoxels scores the larger boundary probability of its two pixels, quantised to 1/65535 so that
sums are exact integers.

Block-wise, exactly. The relief of a pixel depends only on the pixels within ``reach`` of it
(the truncated Gaussian's radius ``int(4 sigma + 0.5)``; ``max_distance - 1`` for the capped
distance, since a distance below the cap is to a pixel within it), and its drainage pointer on its
neighbours' reliefs, so a block read with the :func:`halo` ``reach + 1`` computes the whole
volume's pointers (bit for bit: scipy's filters compute a pixel from the same inputs in the same
order whatever the array's extent; ``tests/test_agglomerate.py`` checks that this halo suffices
and one pixel less does not). Pointers that leave a block are joined across the seam afterwards
(union-find over the blocks' face pixels), so supervoxels cross seams; face sums are integers;
supervoxels are numbered by the raster index of their minimum and objects by their first
supervoxel; the agglomeration is a deterministic function of the region graph, which is therefore
the same. So the result, labels included (not only up to a relabelling), does not depend on the
blocks: one block = the whole volume. The region graph and the agglomeration are global and in
memory (arrays of the touching supervoxel pairs; a dict per region for the final heap phase).

``mode="2d"`` treats every (y, x) slice on its own (no z neighbours, no z smoothing), as for
anisotropic EM stacks; ``"3d"`` uses all three axes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

QUANTUM = 65535  # boundary probabilities as integers 0..65535 (uint8 maps: 257 per step, exact)
MODES = ("2d", "3d")
RELIEFS = ("distance", "probability")
TRUNCATE = 4.0  # Gaussian truncated at 4 sigma (scipy's default)

Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # (lo, hi) of a (z, y, x) region


@dataclass(frozen=True)
class Settings:
    """The supervoxel settings: where and how the watershed runs."""

    mode: str = "2d"
    relief: str = "distance"
    sigma: float = 1.0
    max_distance: int = 10
    threshold: float = 0.5
    mask: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.relief not in RELIEFS:
            raise ValueError(f"relief must be one of {RELIEFS}, got {self.relief!r}")
        if self.sigma < 0 or self.max_distance < 1:
            raise ValueError("sigma must be >= 0 and max_distance >= 1")

    @property
    def axes(self) -> tuple[int, ...]:
        return (0, 1, 2) if self.mode == "3d" else (1, 2)


def halo(settings: Settings) -> tuple[int, int, int]:
    """Pixels of context per side (z, y, x) that make a block's supervoxels those of the volume."""
    reach = int(TRUNCATE * settings.sigma + 0.5) if settings.sigma > 0 else 0
    if settings.relief == "distance":  # a distance d < max_distance is to a pixel within d
        reach = max(reach, settings.max_distance - 1)
    return tuple(reach + 1 if axis in settings.axes else 0 for axis in range(3))


def relief(probability: np.ndarray, settings: Settings) -> np.ndarray:
    """The watershed's relief (float64) of a (z, y, x) cell-probability region."""
    boundary = 1.0 - probability.astype(np.float64)
    sigma = [settings.sigma if axis in settings.axes else 0.0 for axis in range(3)]
    if settings.sigma > 0:
        boundary = ndimage.gaussian_filter(boundary, sigma, mode="reflect", truncate=TRUNCATE)
    if settings.relief == "probability":
        return boundary
    inside = probability > settings.threshold
    if settings.mode == "3d":
        distance = _distance(inside, settings.max_distance)
    else:
        distance = np.stack([_distance(plane, settings.max_distance) for plane in inside])
    return boundary - distance


def _distance(inside: np.ndarray, cap: int) -> np.ndarray:
    """Distance to the nearest pixel outside ``inside``, capped at ``cap``; ``cap`` everywhere
    when there is none (scipy's transform is then undefined)."""
    if inside.all():
        return np.full(inside.shape, float(cap))
    return np.minimum(ndimage.distance_transform_edt(inside), cap)


def quantize(probability: np.ndarray) -> np.ndarray:
    """Boundary probability ``1 - p`` as integers 0..QUANTUM (int64)."""
    return np.rint((1.0 - probability.astype(np.float64)) * QUANTUM).astype(np.int64)


@dataclass
class Fragments:
    """One block's drainage trees: ``labels`` (uint32, 1..count, 0 = masked), and what joins them
    to the neighbouring blocks."""

    labels: np.ndarray | None
    count: int
    root: np.ndarray  # per label: global raster index of its minimum, or MAX if it drains out
    out_label: np.ndarray  # labels of pixels that drain into another block ...
    out_target: np.ndarray  # ... and the global raster index of the pixel they drain into
    face_index: np.ndarray  # global raster index (increasing) of the block's face pixels ...
    face_label: np.ndarray  # ... and their labels


NONE = np.iinfo(np.int64).max


def _global(flat: np.ndarray, lo: Sequence[int], size: Sequence[int], shape: Sequence[int]):
    """Global raster indices of the block-local raster indices ``flat``."""
    coords = np.unravel_index(flat, size)
    return np.ravel_multi_index(tuple(c + a for c, a in zip(coords, lo, strict=True)), shape)


def _shift(window: slice, step: int) -> slice:
    return slice(window.start + step, window.stop + step)


def block_fragments(
    probability: np.ndarray, origin: Sequence[int], box: Box, shape: Sequence[int], s: Settings
) -> Fragments:
    """Drainage trees of the block ``box`` of a volume of ``shape``; ``probability`` covers the
    region from ``origin`` that holds the block and its :func:`halo` (clipped to the volume).

    A pixel drains into the lowest of itself and its neighbours, the one with the smaller global
    raster index among equals: by direction, -z < -y < -x < itself < +x < +y < +z."""
    lo, hi = box
    size = tuple(b - a for a, b in zip(lo, hi, strict=True))
    height = relief(probability, s)
    valid = probability > s.threshold if s.mask else np.ones(probability.shape, bool)
    # the block and one pixel around it on the watershed's axes, padded outside the volume
    grow = [1 if axis in s.axes else 0 for axis in range(3)]
    outer_lo = [max(a - g, 0) for a, g in zip(lo, grow, strict=True)]
    outer_hi = [min(b + g, n) for b, g, n in zip(hi, grow, shape, strict=True)]
    src = tuple(slice(a - o, b - o) for a, b, o in zip(outer_lo, outer_hi, origin, strict=True))
    dst = tuple(
        slice(a - b + g, c - b + g) for a, b, c, g in zip(outer_lo, lo, outer_hi, grow, strict=True)
    )
    h = np.full(tuple(n + 2 * g for n, g in zip(size, grow, strict=True)), np.inf)
    h[dst] = np.where(valid[src], height[src], np.inf)  # masked pixels are never drained into
    core = tuple(slice(g, n + g) for n, g in zip(size, grow, strict=True))
    steps = [(axis, -1) for axis in s.axes] + [(None, 0)] + [(axis, 1) for axis in s.axes[::-1]]
    best = np.full(size, np.inf)
    direction = np.zeros(size, np.int8)
    for code, (axis, step) in enumerate(steps):
        near = h[tuple(_shift(c, step) if a == axis else c for a, c in enumerate(core))]
        lower = near < best
        best[lower], direction[lower] = near[lower], code
    strides = np.array([int(np.prod(size[a + 1 :])) for a in range(3)])
    global_strides = np.array([int(np.prod(shape[a + 1 :])) for a in range(3)])
    step_local = np.array([0 if a is None else st * strides[a] for a, st in steps])
    step_global = np.array([0 if a is None else st * global_strides[a] for a, st in steps])
    leaves = np.zeros(size, bool)  # drains across the block's border
    for code, (axis, step) in enumerate(steps):
        if axis is not None:
            edge = tuple(slice(None) if a != axis else (0 if step < 0 else -1) for a in range(3))
            leaves[edge] |= direction[edge] == code
    direction, leaves = direction.ravel(), leaves.ravel()
    inside = np.isfinite(h[core]).ravel()
    here = np.arange(inside.size)
    parent = np.where(leaves, here, here + step_local[direction])
    while True:  # pointer jumping: every pixel to the root of its tree in the block
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            break
        parent = jumped
    is_root = inside & (parent == here)
    number = np.cumsum(is_root).astype(np.uint32)
    labels = np.where(inside, number[parent], 0).astype(np.uint32)
    roots = np.flatnonzero(is_root)
    minimum = direction[roots] == len(s.axes)  # drains into itself (the other roots leave)
    root = np.full(roots.size, NONE)
    root[minimum] = _global(roots[minimum], lo, size, shape)
    out = np.flatnonzero(inside & leaves)
    face = np.zeros(size, bool)
    for axis in s.axes:
        face[tuple(slice(None) if a != axis else [0, -1] for a in range(3))] = True
    face = np.flatnonzero(face.ravel() & inside)
    return Fragments(
        labels=labels.reshape(size),
        count=int(roots.size),
        root=root,
        out_label=labels[out].astype(np.int64),
        out_target=_global(out, lo, size, shape) + step_global[direction[out]],
        face_index=_global(face, lo, size, shape),
        face_label=labels[face].astype(np.int64),
    )


def join_fragments(blocks: Sequence[Fragments]) -> tuple[np.ndarray, np.ndarray, int]:
    """Supervoxels from the blocks' trees: ``(offsets, node_to_supervoxel, count)``. Block ``k``'s
    label ``l`` is node ``offsets[k] + l``; supervoxels are numbered 1.. in the raster order of
    their minima, which does not depend on the blocks."""
    offsets = np.cumsum([0] + [b.count for b in blocks[:-1]]).astype(np.int64)
    nodes = int(sum(b.count for b in blocks)) + 1
    face_index = np.concatenate([b.face_index for b in blocks])
    face_node = np.concatenate([b.face_label + o for b, o in zip(blocks, offsets, strict=True)])
    order = np.argsort(face_index, kind="stable")
    face_index, face_node = face_index[order], face_node[order]
    source = np.concatenate([b.out_label + o for b, o in zip(blocks, offsets, strict=True)])
    target = np.concatenate([b.out_target for b in blocks])
    target = face_node[np.searchsorted(face_index, target)]
    graph = coo_matrix((np.ones(source.size, np.int8), (source, target)), shape=(nodes, nodes))
    _, component = connected_components(graph, directed=False)
    root = np.concatenate([[-1], *[b.root for b in blocks]])
    key = np.full(component.max() + 1, NONE)
    np.minimum.at(key, component, root)
    rank = np.empty(key.size, np.int64)
    rank[np.argsort(key, kind="stable")] = np.arange(key.size)  # node 0 (key -1) gets rank 0
    return offsets, rank[component], key.size - 1


def block_faces(
    supervoxels: np.ndarray, boundary: np.ndarray, size: Sequence[int], s: Settings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The faces a block owns: those between each of its pixels and the next pixel along every
    axis. ``supervoxels`` and ``boundary`` (:func:`quantize`) cover the block plus one pixel past
    its high end on each axis that has one. Returns the pair keys ``(u, v)`` (u < v, as two rows)
    with the sum of the face scores and the face count, summed per pair."""
    keys, sums = [], []
    for axis in s.axes:
        n = supervoxels.shape[axis] - 1
        low = tuple(slice(0, n) if a == axis else slice(0, size[a]) for a in range(3))
        high = tuple(slice(1, n + 1) if a == axis else slice(0, size[a]) for a in range(3))
        a, b = supervoxels[low], supervoxels[high]
        cut = (a != b) & (a > 0) & (b > 0)
        a, b = a[cut].astype(np.int64), b[cut].astype(np.int64)
        keys.append(np.stack([np.minimum(a, b), np.maximum(a, b)]))
        sums.append(np.maximum(boundary[low][cut], boundary[high][cut]))
    return reduce_faces(np.concatenate(keys, axis=1), np.concatenate(sums), None)


def reduce_faces(
    pairs: np.ndarray, total: np.ndarray, count: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum face scores and counts per supervoxel pair (``pairs``: two rows u < v), in exact
    integers; pairs come out sorted."""
    if count is None:
        count = np.ones(total.size, np.int64)
    base = int(pairs.max()) + 1 if pairs.size else 1
    unique, inverse = np.unique(pairs[0] * base + pairs[1], return_inverse=True)
    # float64 sums of integers are exact below 2^53 (count x QUANTUM: over 10^11 faces)
    summed = np.bincount(inverse, weights=total, minlength=unique.size).astype(np.int64)
    counted = np.bincount(inverse, weights=count, minlength=unique.size).astype(np.int64)
    return np.stack([unique // base, unique % base]), summed, counted


def agglomerate(
    pairs: np.ndarray, total: np.ndarray, count: np.ndarray, stop: float, rounds: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-boundary agglomeration of a region graph (edges ``pairs`` with the sum ``total`` of
    their faces' scores and the face ``count``): merge the two regions whose shared faces have the
    lowest mean score ``total / count / QUANTUM``, sum the faces of the merged region with each
    neighbour, repeat while the lowest mean is below ``stop``. Returns the merges (two rows of the
    merged regions' representatives) and their levels.

    The mean is reducible (a merged edge's mean lies between its parts', so never below the
    lower), so merging every pair of regions that are each other's lowest edge at once yields the
    same hierarchy as lowest-edge-first (Murtagh 1983, Comput. J. 26:354; ties aside: ties go to
    the earlier edge): up to ``rounds`` such vectorised rounds run while they merge at least 1% of
    the regions, then :func:`agglomerate_heap` finishes. A merge's level is at least those of the
    merges that made its two regions, so the result at any threshold below ``stop`` is the set of
    merges whose level is below it (:meth:`Hierarchy.table`).
    """
    merged, levels = [], []
    a, b, total, count = pairs[0], pairs[1], total, count
    for _ in range(rounds):
        level = total / (count * QUANTUM)
        order = np.lexsort((np.arange(level.size), level))
        rank = np.empty(level.size, np.int64)
        rank[order] = np.arange(level.size)
        nodes = int(max(a.max(), b.max())) + 1 if a.size else 0
        lowest = np.full(nodes, level.size, np.int64)
        np.minimum.at(lowest, a, rank)
        np.minimum.at(lowest, b, rank)
        mutual = (lowest[a] == rank) & (lowest[b] == rank) & (level < stop)
        if np.count_nonzero(mutual) < 0.01 * nodes or not mutual.any():
            break
        merged.append(np.stack([a[mutual], b[mutual]]))
        levels.append(level[mutual])
        into = np.arange(nodes)
        into[b[mutual]] = a[mutual]  # a matching: every region in at most one merge
        a, b = into[a], into[b]
        keep = a != b
        pairs, total, count = reduce_faces(
            np.stack([np.minimum(a, b), np.maximum(a, b)])[:, keep], total[keep], count[keep]
        )
        a, b = pairs
    rest, rest_levels = agglomerate_heap(np.stack([a, b]), total, count, stop)
    return (
        np.concatenate([*merged, rest], axis=1),
        np.concatenate([*levels, rest_levels]),
    )


def agglomerate_heap(
    pairs: np.ndarray,
    total: np.ndarray,
    count: np.ndarray,
    stop: float,
    sizes: np.ndarray | None = None,
    min_size: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`agglomerate` lowest edge first, with a heap (ties: the earlier edge, merged edges
    after the others); the merges' levels never decrease. With ``sizes`` (pixels per region id),
    only merges that involve a region under ``min_size`` pixels: an edge between two regions of
    at least ``min_size`` is passed over (sizes only grow, so it never becomes one)."""
    size = None if sizes is None else np.asarray(sizes, np.int64).tolist()
    # an edge: [level, total, count, end, end, alive]; the heap holds (level, sequence, edge)
    adjacency: dict[int, dict[int, list]] = {}
    heap = []
    edges = zip(pairs[0].tolist(), pairs[1].tolist(), total.tolist(), count.tolist(), strict=True)
    for seq, (u, v, t, c) in enumerate(edges):
        edge = [t / (c * QUANTUM), t, c, u, v, True]
        adjacency.setdefault(u, {})[v] = adjacency.setdefault(v, {})[u] = edge
        heap.append((edge[0], seq, edge))
    heapq.heapify(heap)
    seq = len(heap)
    merged, levels = [], []
    while heap and heap[0][0] < stop:
        level, _, edge = heapq.heappop(heap)
        if not edge[5]:
            continue  # replaced by the sum of two edges when their regions merged
        edge[5] = False
        u, v = edge[3], edge[4]
        if size is not None:
            if size[u] >= min_size and size[v] >= min_size:
                continue
            size[u] = size[v] = size[u] + size[v]
        keep, gone = (u, v) if len(adjacency[u]) >= len(adjacency[v]) else (v, u)
        merged.append((keep, gone))
        levels.append(level)
        near, kept = adjacency.pop(gone), adjacency[keep]
        del near[keep], kept[gone]
        for w, moved in near.items():
            around = adjacency[w]
            del around[gone]
            other = kept.get(w)
            if other is None:  # only the gone region touched w: the edge moves over unchanged
                moved[3 if moved[3] == gone else 4] = keep
                kept[w] = around[keep] = moved
                continue
            moved[5] = other[5] = False
            t, c = moved[1] + other[1], moved[2] + other[2]
            edge = [t / (c * QUANTUM), t, c, keep, w, True]
            kept[w] = around[keep] = edge
            heapq.heappush(heap, (edge[0], seq, edge))
            seq += 1
    return np.array(merged, np.int64).reshape(-1, 2).T, np.array(levels, np.float64)


SMALL = ("drop", "merge")  # what becomes of objects under min_size pixels


@dataclass
class Hierarchy:
    """Supervoxels 1..count with their sizes, the agglomeration's merges (up to ``stop``) and the
    region graph it ran on (``graph``: the touching pairs, two rows u < v, with the sum and count
    of their faces' scores; needed for ``small="merge"``)."""

    count: int
    sizes: np.ndarray  # pixels per supervoxel, index 0 unused
    merges: np.ndarray
    levels: np.ndarray
    stop: float
    graph: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def table(self, merge_threshold: float, min_size: int = 0, small: str = "drop") -> np.ndarray:
        """Object of each supervoxel (uint32, index 0 = background = 0) when the agglomeration
        stops at ``merge_threshold`` (at most ``stop``); objects are numbered 1.. in the order of
        their first supervoxel. Objects under ``min_size`` pixels become background
        (``small="drop"``), or (``"merge"``) the agglomeration goes on past the threshold for them
        alone: lowest mean boundary first, each merge joins a small object to a neighbour, until
        every object is at least ``min_size`` or touches none (these are dropped)."""
        if merge_threshold > self.stop:
            raise ValueError(f"merge_threshold {merge_threshold} above the hierarchy's {self.stop}")
        if small not in SMALL:
            raise ValueError(f"small must be one of {SMALL}, got {small!r}")
        component = _components(self.count + 1, self.merges[:, self.levels < merge_threshold])
        if small == "merge" and min_size > 0:
            component = self._absorb(component, min_size)
        n = self.count + 1
        size = np.bincount(component, weights=self.sizes, minlength=component.max() + 1)
        first = np.full(size.size, n)
        np.minimum.at(first, component[1:], np.arange(1, n))
        kept = (size >= min_size) & (first < n)
        number = np.zeros(size.size, np.uint32)
        order = np.flatnonzero(kept)[np.argsort(first[kept], kind="stable")]
        number[order] = np.arange(1, order.size + 1, dtype=np.uint32)
        table = number[component]
        table[0] = 0
        return table

    def _absorb(self, component: np.ndarray, min_size: int) -> np.ndarray:
        """``component`` (region of each supervoxel) after the small regions' merges."""
        if self.graph is None:
            raise ValueError("small='merge' needs the hierarchy's region graph")
        pairs, total, counted = self.graph
        a, b = component[pairs[0]], component[pairs[1]]
        sizes = np.bincount(component, weights=self.sizes, minlength=component.size)
        # an edge of two objects of min_size pixels never merges, nor any edge it is summed into
        useful = (a != b) & ((sizes[a] < min_size) | (sizes[b] < min_size))
        pairs, total, counted = reduce_faces(
            np.stack([np.minimum(a, b), np.maximum(a, b)])[:, useful],
            total[useful],
            counted[useful],
        )
        merges, _ = agglomerate_heap(pairs, total, counted, np.inf, sizes, min_size)
        return _components(component.size, merges)[component]


def _components(n: int, merges: np.ndarray) -> np.ndarray:
    """Connected component (0..) of each of ``n`` nodes joined by the edges ``merges`` (2 rows)."""
    graph = coo_matrix((np.ones(merges.shape[1], np.int8), (merges[0], merges[1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)  # int32 from scipy


Runner = Callable[[Callable, Sequence], list]


def serial(function: Callable, items: Sequence) -> list:
    """Run ``function`` on each item in turn (the in-memory :data:`Runner`)."""
    return [function(item) for item in items]


def blocks_of(shape: Sequence[int], block: Sequence[int]) -> list[Box]:
    """The boxes of a regular grid of ``block``-sized blocks over ``shape`` (z, y, x)."""
    starts = [range(0, n, b) for n, b in zip(shape, block, strict=True)]
    return [
        (lo, tuple(min(a + b, n) for a, b, n in zip(lo, block, shape, strict=True)))
        for lo in ((z, y, x) for z in starts[0] for y in starts[1] for x in starts[2])
    ]


def build(
    read: Callable[[Sequence[int], Sequence[int]], np.ndarray],
    store: np.ndarray,
    block: Sequence[int],
    s: Settings,
    stop: float,
    run: Runner = serial,
) -> tuple[Hierarchy, Callable[[np.ndarray], None]]:
    """The hierarchy of a (z, y, x) volume, on a grid of ``block``-sized blocks. ``read(lo, hi)``
    returns the cell probability of a region; ``store`` (numpy or Zarr, the volume's shape,
    uint32, chunks aligned with the blocks) receives each block's tree labels. ``run`` maps a
    function over the blocks (serially, or in parallel with Dask). Returns the hierarchy and
    ``write(table)``, which replaces the tree labels in ``store`` by the objects of a
    :meth:`Hierarchy.table` (once: it reads the tree labels)."""
    shape = tuple(store.shape)
    block = tuple(min(b, n) for b, n in zip(block, shape, strict=True))
    boxes = blocks_of(shape, block)
    grid = [-(-n // b) for n, b in zip(shape, block, strict=True)]
    pad = halo(s)

    def fragments(box: Box) -> Fragments:
        lo, hi = box
        origin = [max(a - p, 0) for a, p in zip(lo, pad, strict=True)]
        end = [min(b + p, n) for b, p, n in zip(hi, pad, shape, strict=True)]
        result = block_fragments(read(origin, end), origin, box, shape, s)
        store[_region(lo, hi)] = result.labels
        result.labels = None  # in the store now
        return result

    parts = run(fragments, boxes)
    offsets, to_supervoxel, count = join_fragments(parts)
    offsets = offsets.reshape(grid)  # boxes are in C order of the grid

    def supervoxels(lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        local = np.asarray(store[_region(lo, hi)]).astype(np.int64)
        which = [np.arange(a, b) // n for a, b, n in zip(lo, hi, block, strict=True)]
        return to_supervoxel[np.where(local > 0, local + offsets[np.ix_(*which)], 0)]

    def faces(box: Box) -> tuple[np.ndarray, ...]:
        lo, hi = box
        end = [
            min(b + 1, n) if a in s.axes else b
            for a, (b, n) in enumerate(zip(hi, shape, strict=True))
        ]
        ids = supervoxels(lo, end)
        size = [b - a for a, b in zip(lo, hi, strict=True)]
        pairs, total, counted = block_faces(ids, quantize(read(lo, end)), size, s)
        core = ids[tuple(slice(0, n) for n in size)].ravel()
        present, pixels = np.unique(core[core > 0], return_counts=True)
        return pairs, total, counted, present, pixels

    results = run(faces, boxes)
    pairs, total, counted = reduce_faces(
        np.concatenate([r[0] for r in results], axis=1),
        np.concatenate([r[1] for r in results]),
        np.concatenate([r[2] for r in results]),
    )
    sizes = np.bincount(
        np.concatenate([r[3] for r in results]),
        weights=np.concatenate([r[4] for r in results]),
        minlength=count + 1,
    ).astype(np.int64)
    merges, levels = agglomerate(pairs, total, counted, stop)

    def write(table: np.ndarray) -> None:
        def relabel(box: Box) -> None:
            store[_region(*box)] = table[supervoxels(*box)]

        run(relabel, boxes)

    return Hierarchy(count, sizes, merges, levels, stop, (pairs, total, counted)), write


def _region(lo: Sequence[int], hi: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
