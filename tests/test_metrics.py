import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from unetpipe import metrics
from unetpipe.metrics import (
    foreground_iou,
    info_scores,
    isbi_scores,
    pixel_error,
    pixel_fscores,
    rand_scores,
    seg_score,
    slice_unique,
    slice_v_rand,
    v_info,
    v_rand,
)


def squares(labels):
    return float(np.sum(np.unique(labels, return_counts=True)[1].astype(float) ** 2))


@pytest.mark.parametrize("seed", range(4))
def test_rand_scores_match_scikit_image(seed):
    """skimage counts pairs (n^2 - n) where the challenge counts n^2; convert exactly."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 6, (30, 40))
    seg = rng.integers(1, 9, (30, 40))
    _, sk_split, sk_merge = adapted_rand_error(truth, seg)
    fg = truth > 0
    n, s_true, s_seg = fg.sum(), squares(truth[fg]), squares(seg[fg])
    sum_n2 = sk_split * (s_true - n) + n  # skimage's "precision" divides by the true rows
    assert sk_merge * (s_seg - n) + n == pytest.approx(sum_n2, rel=1e-12)
    merge, split = rand_scores(seg, truth)
    assert merge == pytest.approx(sum_n2 / s_seg, abs=1e-9)
    assert split == pytest.approx(sum_n2 / s_true, abs=1e-9)
    assert v_rand(seg, truth) == pytest.approx(2 * sum_n2 / (s_seg + s_true), abs=1e-9)


def test_v_rand_hand_cases():
    truth = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    assert v_rand(truth * 7, truth) == 1.0
    merged = np.ones(8, int)
    assert rand_scores(merged, truth) == (0.5, 1.0)  # 32 / 64, 32 / 32
    assert v_rand(merged, truth) == pytest.approx(2 / 3)
    split = np.array([1, 1, 2, 2, 3, 3, 4, 4])
    assert rand_scores(split, truth) == (1.0, 0.5)  # 16 / 16, 16 / 32
    # unassigned pixels (0) are singletons: sum n^2 = 4 + 1 + 1 = 6 = sum s^2; recall 6 / 16
    assert rand_scores(np.array([1, 1, 0, 0]), np.array([1, 1, 1, 1])) == (1.0, 0.375)
    # the ground truth's background does not count
    truth_bg = np.concatenate([truth, [0, 0, 0]])
    assert v_rand(np.concatenate([merged, [5, 1, 0]]), truth_bg) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(3))
def test_info_scores_match_mutual_information(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, (25, 25))
    seg = rng.integers(1, 7, (25, 25))
    fg = truth > 0
    h_seg_given_true, h_true_given_seg = variation_of_information(truth[fg], seg[fg])
    h_true = np.log2(np.unique(truth[fg], return_counts=True)[1] / fg.sum())
    h_seg = np.log2(np.unique(seg[fg], return_counts=True)[1] / fg.sum())
    h_true = -(np.unique(truth[fg], return_counts=True)[1] / fg.sum()) @ h_true
    h_seg = -(np.unique(seg[fg], return_counts=True)[1] / fg.sum()) @ h_seg
    mutual = h_true - h_true_given_seg
    assert mutual == pytest.approx(h_seg - h_seg_given_true)
    merge, split = info_scores(seg, truth)
    assert merge == pytest.approx(mutual / h_true, abs=1e-9)
    assert split == pytest.approx(mutual / h_seg, abs=1e-9)
    assert v_info(seg, truth) == pytest.approx(2 * mutual / (h_true + h_seg), abs=1e-9)


def test_info_scores_hand_cases():
    truth = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    assert v_info(truth + 3, truth) == pytest.approx(1.0)
    merge, split = info_scores(np.array([1, 1, 2, 2, 3, 3, 4, 4]), truth)
    assert (merge, split) == pytest.approx((1.0, 0.5))  # I = log 2, H(S) = log 4
    merge, split = info_scores(np.ones(8, int), truth)
    assert (merge, split) == (0.0, 1.0)  # I = 0, H(S) = 0


def test_pixel_fscores_and_error():
    prob = np.array([0.05, 0.25, 0.75, 0.95, 0.5, 0.35])
    target = np.array([0, 0, 3, 1, 1, 0])
    expected = [
        2 * ((prob > t) & (target > 0)).sum() / ((prob > t).sum() + (target > 0).sum())
        for t in metrics.ISBI_THRESHOLDS
    ]
    np.testing.assert_allclose(pixel_fscores(prob, target), expected, rtol=0, atol=1e-12)
    assert pixel_fscores(prob, target)[[0, 4, 10]].tolist() == [2 * 3 / 9, 1.0, 0.0]
    assert pixel_error(prob, target) == 0.0  # perfect at t = 0.4
    assert pixel_error(prob, target, thresholds=[0.0]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="increasing"):
        pixel_error(prob, target, thresholds=[0.5, 0.1])


def cells(width=3):
    """Four 20x20 cells in a 2x2 grid separated by membranes of ``width`` pixels."""
    truth = np.zeros((43, 43), np.uint32)
    for k, (y, x) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        y0, x0 = y * (20 + width), x * (20 + width)
        truth[y0 : y0 + 20, x0 : x0 + 20] = k + 1
    return truth


def test_isbi_protocol_threshold_sweep():
    truth = cells()
    prob = (truth > 0).astype(np.float32)
    prob[:20, 20:23] = 0.35  # a faint membrane between cells 1 and 2
    faint = isbi_scores(prob, truth, thresholds=[0.3])
    assert faint["v_rand"] < 0.9  # cells 1 and 2 merge
    best = isbi_scores(prob, truth)
    assert best["v_rand"] == pytest.approx(1.0) and best["v_info"] == pytest.approx(1.0)
    assert best["v_rand_threshold"] == 0.4 and best["rand_error"] == pytest.approx(0.0)


def test_border_thinning_ignores_membrane_width():
    truth = np.zeros((20, 43), np.uint32)
    truth[:, :20], truth[:, 23:] = 1, 2  # two cells, a 3-px membrane
    thick = np.zeros_like(truth)
    thick[2:-2, 2:18], thick[2:-2, 25:-2] = 1, 2  # the same cells with 7-px membranes
    prob = (thick > 0).astype(float)
    assert isbi_scores(prob, truth, thinning=False)["v_rand"] < 0.9
    assert isbi_scores(prob, truth)["v_rand"] == pytest.approx(1.0)
    assert isbi_scores(prob, truth)["v_info"] == pytest.approx(1.0)


def test_slices_are_scored_separately():
    truth = np.stack([cells(), cells()])
    seg = np.where(truth > 0, 1, 0)  # one segment per slice, label 1 in both
    per_slice = [rand_scores(s, t) for s, t in zip(seg, truth, strict=True)]
    merge, split = rand_scores(slice_unique(seg), slice_unique(truth))
    assert merge == pytest.approx(per_slice[0][0]) and split == pytest.approx(1.0)
    assert merge == pytest.approx(0.25)  # 4 cells of equal size merged: 4 * 400^2 / 1600^2
    assert len(np.unique(slice_unique(truth))) == 9


def test_slice_v_rand_mean_over_slices():
    truth = np.stack([cells(), cells()])
    prob = (truth > 0).astype(float)
    prob[1, :20, 20:23] = 0.6  # slice 1: cells 1 and 2 merge below t = 0.6
    assert slice_v_rand(prob, truth) == (1.0, 0.6)
    score, t = slice_v_rand(prob, truth, thresholds=[0.5])
    # slice 1 at t = 0.5: 2 of 4 equal cells merged, precision 4 / 6, recall 1, V_rand 0.8
    assert t == 0.5 and score == pytest.approx((1.0 + 0.8) / 2)


def test_seg_score_hand_case():
    ref = np.zeros((4, 8), int)
    ref[:2, :2] = 1  # 4 px
    ref[:2, 4:6] = 2  # 4 px
    ref[3, 0] = 3  # 1 px, missed
    seg = np.zeros_like(ref)
    seg[:2, :3] = 7  # covers object 1 and 2 more px: J = 4 / 6
    seg[0, 4:6] = 9  # exactly half of object 2: no match
    assert seg_score(seg, ref) == pytest.approx((4 / 6 + 0 + 0) / 3)
    seg[1, 4] = 9  # 3 of 4: J = 3 / 4
    assert seg_score(seg, ref) == pytest.approx((4 / 6 + 3 / 4) / 3)
    assert seg_score(ref * 5, ref) == 1.0


def test_foreground_iou():
    a = np.array([0, 1, 1, 1, 0])
    b = np.array([0, 0, 2, 2, 2])
    assert foreground_iou(a, b) == 0.5


def test_sparse_large_labels():
    truth = np.array([4_000_000_000, 4_000_000_000, 7, 7], np.uint32)
    seg = np.array([3_999_999_999, 3_999_999_999, 1, 2], np.uint32)
    assert rand_scores(seg, truth) == (1.0, 0.75)


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        v_rand(np.ones((2, 2), int), np.ones((2, 3), int))
    with pytest.raises(ValueError, match="integer"):
        v_rand(np.ones(3) * 0.5, np.ones(3, int))
    with pytest.raises(ValueError, match="no foreground"):
        v_rand(np.ones(3, int), np.zeros(3, int))
    with pytest.raises(ValueError, match="no objects"):
        seg_score(np.ones(3, int), np.zeros(3, int))
