import numpy as np
import pytest
from skimage.segmentation import relabel_sequential

from unetpipe.affinities import OFFSETS_2D, OFFSETS_3D, affinity_targets
from unetpipe.metrics import v_rand
from unetpipe.mutex import edge_weights, mutex_watershed


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
