import numpy as np
import pytest
from skimage.segmentation import relabel_sequential

from unetpipe.affinities import OFFSETS_2D, OFFSETS_3D, affinity_targets
from unetpipe.metrics import v_rand
from unetpipe.mutex import (
    edge_weights,
    fill_unlabelled,
    mutex_watershed,
    mutex_watershed_blocks,
    overlap_matches,
    plan_blocks,
)


def cells_2d() -> np.ndarray:
    """Four cells separated by 1-px membranes (0), one of them touching another directly."""
    labels = np.zeros((64, 64), np.int64)
    labels[:30, :30] = 1
    labels[:30, 31:] = 2
    labels[31:, :] = 3
    labels[40:50, 10:20] = 4  # inside cell 3, touching it without a membrane
    return labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to relabelling."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_perfect_affinities_give_back_the_labels():
    labels = cells_2d()
    targets, _ = affinity_targets(labels, OFFSETS_2D)
    out = mutex_watershed(targets, OFFSETS_2D)
    assert same_partition(out, labels) and (out[labels == 0] == 0).all()
    assert same_partition(mutex_watershed(targets, OFFSETS_2D, stride=3), labels)


def test_perfect_3d_affinities_give_back_the_labels():
    labels = np.zeros((6, 20, 24), np.int64)
    labels[:3, :, :11] = 1
    labels[:3, :, 12:] = 2
    labels[3:] = 3  # touches cells 1 and 2 across z, no membrane between
    targets, _ = affinity_targets(labels, OFFSETS_3D)
    assert same_partition(mutex_watershed(targets, OFFSETS_3D), labels)


def test_noisy_affinities_still_segment_sensibly():
    labels = cells_2d()
    targets, _ = affinity_targets(labels, OFFSETS_2D)
    noisy = np.clip(targets + np.random.default_rng(0).normal(0, 0.2, targets.shape), 0, 1)
    out = relabel_sequential(mutex_watershed(noisy, OFFSETS_2D))[0]
    big = np.bincount(out.ravel()) >= 16
    big[0] = False
    out = np.where(big[out], out, 0)
    assert v_rand(out, labels) > 0.95
    assert 4 <= len(np.unique(out)) - 1 <= 6


def test_edge_weights_by_hand():
    affinities = np.array([[[0.9, 0.8, 0.7]], [[0.0, 0.2, 0.6]]])  # (2 offsets, 1, 3)
    offsets = [[0, -1], [0, -2]]
    weights = edge_weights(affinities, offsets, bias=0.1)
    np.testing.assert_allclose(weights[0], [[0.0, 0.8, 0.7]])  # x=0 has no left neighbour
    np.testing.assert_allclose(weights[1], [[0.0, 0.0, -0.5]])  # -(1 - 0.6 + 0.1)
    weights = edge_weights(affinities, offsets, bias=-0.5, mask=np.array([[True, True, False]]))
    np.testing.assert_allclose(weights, [[[0.0, 0.8, 0.0]], [[0.0, 0.0, 0.0]]])
    with pytest.raises(ValueError, match="3 affinity channels but 2 offsets"):
        edge_weights(np.zeros((3, 1, 3)), offsets)


def test_bias_moves_the_repulsive_edges_before_or_after_the_attractive_ones():
    # Three pixels in a row, attracted with 0.5; the ends repelled with weight 1 - 0.45 = 0.55.
    affinities = np.array([[[0.0, 0.5, 0.5]], [[0.0, 0.0, 0.45]]])
    offsets = [[0, -1], [0, -2]]
    split = mutex_watershed(affinities, offsets)
    assert split[0, 0] == split[0, 1] != split[0, 2]  # the repulsion came first
    merged = mutex_watershed(affinities, offsets, bias=-0.1)  # repulsion 0.45 < 0.5
    assert len(np.unique(merged)) == 1 and merged[0, 0] != 0
    with pytest.raises(ValueError, match="stride"):
        mutex_watershed(affinities, offsets, stride=0)


# --- block-wise ----------------------------------------------------------------------------------


def cells_3d() -> np.ndarray:
    """Twelve box cells of a (6, 40, 48) volume, 1-voxel membranes (0) between them in y and x,
    cells touching across z between z 2 and 3; several cells cross the block faces of
    (3, 16, 16) blocks."""
    labels = np.zeros((6, 40, 48), np.int64)
    n = 0
    for z0, z1 in ((0, 3), (3, 6)):
        for y0, y1 in ((0, 19), (20, 40)):
            for x0, x1 in ((0, 13), (14, 33), (34, 48)):
                n += 1
                labels[z0:z1, y0:y1, x0:x1] = n
    return labels


def test_plan_blocks_tiles_the_volume_and_grows_by_the_longest_offset():
    plan = plan_blocks((6, 40, 48), (3, 16, 16), OFFSETS_3D)  # longest: z 3, y 27, x 27
    assert len(plan.cores) == 2 * 3 * 3
    covered = np.zeros(plan.shape, int)
    for lo, hi in plan.cores:
        covered[tuple(map(slice, lo, hi))] += 1
    assert (covered == 1).all()
    assert plan.cores[0] == ((0, 0, 0), (3, 16, 16)) and plan.grown[0] == ((0, 0, 0), (6, 40, 43))
    assert plan.grown[4] == ((0, 0, 0), (6, 40, 48))  # the middle block: clipped on every side
    assert plan.scratch_shape == (18, 6, 40, 48)
    # Face neighbours only: each block with the next one along z, y and x.
    assert (0, 9) in plan.pairs and (0, 3) in plan.pairs and (0, 1) in plan.pairs
    assert (0, 4) not in plan.pairs and len(plan.pairs) == 9 + 2 * 6 + 2 * 6
    with pytest.raises(ValueError, match="3 positive sizes"):
        plan_blocks((6, 40, 48), (3, 0, 16), OFFSETS_3D)


def test_overlap_matches_by_hand():
    first = np.array([1, 1, 1, 1, 2, 2, 0, 3, 3, 3])
    second = np.array([5, 5, 5, 6, 6, 6, 6, 7, 0, 0])
    # 1~5: 3 of max(4, 3) = 4; 2~6: 2 of max(2, 4) = 4; 1~6: 1 of 4, no; 3~7: 1 of max(3, 1),
    # no: label 7 is a sliver inside label 3.
    assert overlap_matches(first, second).tolist() == [[1, 5], [2, 6]]
    assert overlap_matches(first, second, fraction=0.7).tolist() == [[1, 5]]
    assert overlap_matches(first, np.zeros_like(second)).shape == (0, 2)


def test_blockwise_equals_the_whole_volume_on_clear_affinities():
    labels = cells_3d()
    targets, _ = affinity_targets(labels, OFFSETS_3D)
    cells = labels > 0
    blocks = mutex_watershed_blocks(targets, OFFSETS_3D, (3, 16, 16))
    assert same_partition(blocks[cells], labels[cells]) and blocks.all()  # membranes filled
    assert sorted(np.unique(blocks)) == list(range(1, 13))  # numbered 1..n
    whole = mutex_watershed(targets, OFFSETS_3D)
    assert same_partition(blocks[cells], whole[cells]) and (whole[~cells] == 0).all()
    masked = mutex_watershed_blocks(targets, OFFSETS_3D, (3, 16, 16), mask_threshold=0.5)
    inside = masked > 0  # the membranes (and voxels with half their neighbours off) stay 0
    assert (masked[~cells] == 0).all() and same_partition(masked[inside], labels[inside])


def test_blockwise_stays_close_to_the_whole_volume_on_noisy_affinities():
    labels = cells_3d()
    targets, _ = affinity_targets(labels, OFFSETS_3D)
    noise = np.random.default_rng(1).normal(0, 0.15, targets.shape)
    noisy = np.clip(0.2 + 0.6 * targets + noise, 0, 1).astype(np.float32)
    whole = mutex_watershed(noisy, OFFSETS_3D)
    blocks = mutex_watershed_blocks(noisy, OFFSETS_3D, (3, 16, 16))
    assert v_rand(blocks, whole) > 0.99 and v_rand(blocks, labels) > 0.99
    # The mask leaves low-affinity voxels (membranes) at 0; min_size drops small objects.
    masked = mutex_watershed_blocks(noisy, OFFSETS_3D, (3, 16, 16), mask_threshold=0.45)
    assert (masked == 0).sum() > 0.5 * (labels == 0).sum()
    large = mutex_watershed_blocks(
        noisy, OFFSETS_3D, (3, 16, 16), mask_threshold=0.45, min_size=1000
    )
    kept = np.bincount(masked.ravel())[1:] >= 1000
    assert 0 < large.max() == kept.sum() and same_partition(
        large, np.where(kept[masked - 1], masked, 0)
    )


def test_fill_unlabelled_floods_along_low_affinities():
    labels = cells_2d()
    targets, _ = affinity_targets(labels, OFFSETS_2D)
    seeds = np.where(np.isin(labels, [1, 2]), labels, 0)  # cells 3 and 4 dropped
    filled = fill_unlabelled(seeds, targets, OFFSETS_2D)
    assert filled.all() and set(np.unique(filled)) == {1, 2}
    assert (filled[labels == 1] == 1).all() and (filled[labels == 2] == 2).all()
    assert fill_unlabelled(np.zeros_like(seeds), targets, OFFSETS_2D).max() == 0
