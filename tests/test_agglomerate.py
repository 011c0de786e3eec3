import itertools

import numpy as np
import pytest
from scipy import ndimage

from unetpipe import agglomerate as agg


def hierarchy(prob, block, settings, stop=1.0):
    """The hierarchy of an in-memory volume on ``block``-sized blocks, and its write function."""
    store = np.zeros(prob.shape, np.uint32)
    h, write = agg.build(
        lambda lo, hi: prob[tuple(map(slice, lo, hi))], store, block, settings, stop
    )
    return h, write, store


def objects(prob, block, settings, threshold, min_size=0, small="drop"):
    h, write, store = hierarchy(prob, block, settings)
    write(h.table(threshold, min_size, small))
    return store


def ridge(height, shape=(1, 20, 30)):
    """Two flat basins (boundary 0.1) left and right of a one-pixel ridge of ``height``."""
    boundary = np.full(shape, 0.1)
    boundary[..., shape[-1] // 2] = height
    return 1.0 - boundary


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_high_ridge_keeps_regions_apart_weak_ridge_merges(sigma):
    s = agg.Settings(relief="probability", sigma=sigma)
    strong = objects(ridge(0.9), (1, 20, 30), s, threshold=0.5)
    left, right = strong[0, :, :15], strong[0, :, 16:]
    assert strong.max() == 2 and (left == left[0, 0]).all() and (right == right[0, 0]).all()
    assert left[0, 0] != right[0, 0] and (strong > 0).all()  # the ridge goes to a side too
    weak = objects(ridge(0.3), (1, 20, 30), s, threshold=0.5)
    assert (weak == 1).all()
    # the hierarchy holds both: the ridge's faces merge at its level (max of its two pixels)
    h, _, _ = hierarchy(ridge(0.9), (1, 20, 30), agg.Settings(relief="probability", sigma=0.0))
    assert h.count == 2 and h.levels.tolist() == [round(0.9 * 65535) / 65535]


def naive(pairs, total, count, stop, n, cluster=None, sizes=None, min_size=0):
    """Reference: lowest mean first, every mean recomputed from the original faces each step;
    with ``sizes``, only merges of a cluster under ``min_size`` (clusters start as ``cluster``)."""
    cluster = list(range(n)) if cluster is None else list(cluster)
    while True:
        sums = {}
        for u, v, t, c in zip(*pairs, total, count, strict=True):
            a, b = sorted((cluster[u], cluster[v]))
            big = (
                sizes is not None
                and min(sum(sizes[k] for k in range(n) if cluster[k] == e) for e in (a, b))
                >= min_size
            )
            if a != b and not big:
                s = sums.setdefault((a, b), [0, 0])
                s[0], s[1] = s[0] + t, s[1] + c
        if not sums:
            break
        (a, b), (t, c) = min(sums.items(), key=lambda item: item[1][0] / item[1][1])
        if t / (c * agg.QUANTUM) >= stop:
            break
        cluster = [a if k == b else k for k in cluster]
    return cluster


def partition(labels):
    """A labelling as a set of frozensets of indices."""
    groups = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, set()).add(i)
    return {frozenset(g) for g in groups.values()}


@pytest.mark.parametrize("seed", range(4))
def test_agglomeration_equals_the_naive_reference(seed):
    rng = np.random.default_rng(seed)
    n = 60
    candidates = [(u, v) for u, v in itertools.combinations(range(1, n), 2) if rng.random() < 0.08]
    pairs = np.array(candidates).T
    count = rng.integers(1, 20, pairs.shape[1])
    total = count * rng.integers(0, agg.QUANTUM, pairs.shape[1])  # distinct means (no ties)
    merges, levels = agg.agglomerate(pairs, total, count, stop=0.9)
    h = agg.Hierarchy(n - 1, np.ones(n, np.int64), merges, levels, 0.9)
    for threshold in (0.1, 0.3, 0.5, 0.7, 0.9):
        expected = naive(pairs, total, count, threshold, n)
        assert partition(h.table(threshold)[1:]) == partition(expected[1:])
    heap = agg.agglomerate_heap(pairs, total, count, stop=0.9)
    assert partition(
        agg.Hierarchy(n - 1, np.ones(n, np.int64), *heap, 0.9).table(0.9)[1:]
    ) == partition(naive(pairs, total, count, 0.9, n)[1:])
    assert np.all(np.diff(heap[1]) >= 0)  # lowest edge first: levels never decrease


@pytest.mark.parametrize("seed", range(4))
def test_small_objects_merge_as_the_naive_reference(seed):
    """small="merge": past the threshold, only small objects merge, lowest mean first; those
    that touch nothing are dropped (and drop removes every small one)."""
    rng = np.random.default_rng(seed)
    n, threshold, min_size = 40, 0.4, 30
    candidates = [(u, v) for u, v in itertools.combinations(range(1, n), 2) if rng.random() < 0.1]
    pairs = np.array(candidates).T
    count = rng.integers(1, 20, pairs.shape[1])
    total = count * rng.integers(0, agg.QUANTUM, pairs.shape[1])
    sizes = np.concatenate([[0], rng.integers(1, 40, n - 1)])
    merges, levels = agg.agglomerate(pairs, total, count, stop=threshold)
    h = agg.Hierarchy(n - 1, sizes, merges, levels, threshold, (pairs, total, count))
    before = naive(pairs, total, count, threshold, n)
    after = naive(pairs, total, count, np.inf, n, before, sizes, min_size)
    size = {c: sum(sizes[k] for k in range(n) if after[k] == c) for c in set(after)}
    expected = [after[k] if size[after[k]] >= min_size and k else 0 for k in range(n)]
    merged = h.table(threshold, min_size, "merge")
    assert partition(merged) == partition(expected)
    assert (merged[1:] == 0).sum() < (h.table(threshold, min_size)[1:] == 0).sum()
    dropped = h.table(threshold, min_size, "drop")
    size = {c: sum(sizes[k] for k in range(n) if before[k] == c) for c in set(before)}
    assert partition(dropped) == partition(
        [before[k] if size[before[k]] >= min_size and k else 0 for k in range(n)]
    )
    with pytest.raises(ValueError, match="graph"):
        agg.Hierarchy(n - 1, sizes, merges, levels, threshold).table(threshold, 5, "merge")
    with pytest.raises(ValueError, match="small"):
        h.table(threshold, 5, "fill")


def smooth_volume(shape, seed, sigma=2.0):
    prob = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return (prob - prob.min()) / (prob.max() - prob.min())


def test_small_objects_merge_with_ids_past_int32_products():
    """Region ids whose products pass 2^31 (the pair keys of reduce_faces) merge right."""
    n = 70_000
    sizes = np.full(n, 100)
    sizes[[n - 3, n - 1]] = 5
    pairs = np.array([[n - 4, n - 3, n - 2], [n - 3, n - 2, n - 1]])
    total = np.array([1, 3, 2]) * agg.QUANTUM // 4
    count = np.ones(3, np.int64)
    h = agg.Hierarchy(
        n - 1, sizes, np.zeros((2, 0), np.int64), np.zeros(0), 0.1, (pairs, total, count)
    )
    table = h.table(0.1, 10, "merge")
    assert table[n - 3] == table[n - 4] and table[n - 1] == table[n - 2]  # to the lower mean
    assert table[n - 4] != table[n - 2] and np.unique(table[1:]).size == n - 3


@pytest.mark.parametrize(
    "mode,relief,mask,small",
    [
        ("2d", "probability", False, "drop"),
        ("2d", "distance", True, "merge"),
        ("3d", "probability", True, "merge"),
        ("3d", "distance", False, "drop"),
    ],
)
def test_blockwise_equals_whole_volume(mode, relief, mask, small):
    prob = smooth_volume((5, 36, 44), seed=3)
    prob[:, 30:, 30:] = 0.95  # a corner with no background: the distance transform's edge case
    s = agg.Settings(mode=mode, relief=relief, sigma=1.0, max_distance=4, mask=mask)
    whole = objects(prob, prob.shape, s, threshold=0.45, min_size=5, small=small)
    assert 5 < whole.max() < 200
    for block in [(1, 11, 13), (2, 36, 9), (5, 7, 44), (3, 5, 6)]:
        np.testing.assert_array_equal(objects(prob, block, s, 0.45, 5, small), whole)


def test_object_crossing_seams_keeps_one_id():
    prob = np.full((1, 30, 40), 0.05)
    prob[0, 10:20, 2:38] = 0.9  # a bar over four blocks along x
    prob[0, 14, 2:38] += 0.05  # its lowest boundary: one line, a single basin of the bar
    s = agg.Settings(relief="probability", sigma=1.0, mask=True)
    labels = objects(prob, (1, 16, 10), s, threshold=0.5)
    bar = labels[0, 10:20, 2:38]
    assert labels.max() == 1 and (bar == 1).all() and (labels[prob <= 0.5] == 0).all()


def test_bad_settings():
    with pytest.raises(ValueError, match="mode"):
        agg.Settings(mode="4d")
    with pytest.raises(ValueError, match="relief"):
        agg.Settings(relief="height")
    h, _, _ = hierarchy(ridge(0.9), (1, 20, 30), agg.Settings(), stop=0.5)
    with pytest.raises(ValueError, match="above"):
        h.table(0.6)


@pytest.mark.parametrize("relief", ["probability", "distance"])
@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_halo_is_enough_and_needed(mode, relief):
    """Within one pixel of a block, the relief from the block and its halo is the whole volume's,
    bit for bit; with one pixel less of halo it is not (the Gaussian's reach sets the halo of the
    probability relief, the distance cap that of the distance relief here)."""
    prob = smooth_volume((24, 40, 40), seed=5, sigma=1.5)
    sigma = 1.5 if relief == "probability" else 0.5
    s = agg.Settings(mode=mode, relief=relief, sigma=sigma, max_distance=5, threshold=0.3)
    assert agg.halo(s)[1] == (7 if relief == "probability" else 5)
    whole = agg.relief(prob, s)
    lo, hi = np.array([10, 15, 15]), np.array([13, 25, 25])
    grow = np.array([axis in s.axes for axis in range(3)], int)
    near = tuple(map(slice, lo - grow, hi + grow))
    for less, equal in [(0, True), (1, False)]:
        pad = np.array(agg.halo(s)) - less * grow
        region = prob[tuple(map(slice, lo - pad, hi + pad))]
        inner = tuple(map(slice, pad - grow, pad - grow + hi - lo + 2 * grow))
        assert np.array_equal(agg.relief(region, s)[inner], whole[near]) == equal
