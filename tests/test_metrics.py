import itertools

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import adapted_rand_error, variation_of_information

from unetpipe import metrics
from unetpipe.io import read_image
from unetpipe.metrics import (
    SIMPLE_POINT,
    det_score,
    foreground_iou,
    info_scores,
    isbi_scores,
    neighbour_codes,
    op_csb,
    pixel_error,
    pixel_fscores,
    rand_scores,
    seg_score,
    slice_unique,
    slice_v_rand,
    v_info,
    v_rand,
    warping_error,
    warping_scores,
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


def test_det_score_hand_case():
    """CTC DET = 1 - min(AOGM-D, AOGM-D0) / AOGM-D0, weights split 5, miss 10, spurious 1."""
    ref = np.zeros((6, 10), int)
    ref[0, :2], ref[0, 3:5], ref[2, :3], ref[4, :4] = 1, 2, 3, 4  # 4 objects: AOGM-D0 = 40
    seg = np.zeros_like(ref)
    seg[0, :5] = 7  # covers all of 1 and 2: one segment for two objects, 1 split (5)
    seg[2, :1] = 8  # 1 of 3 px of object 3: no match, a miss (10) and a spurious segment (1)
    seg[4, :4] = 9  # object 4 exactly
    seg[5, 8:] = 3  # on the background: spurious (1)
    assert det_score(seg, ref) == pytest.approx(1 - (5 + 10 + 1 + 1) / 40)
    assert op_csb(seg, ref) == pytest.approx((seg_score(seg, ref) + det_score(seg, ref)) / 2)
    assert det_score(ref * 3, ref) == 1.0 and det_score(np.zeros_like(ref), ref) == 0.0
    fragments = ref.copy()
    fragments[1::2] = np.arange(30).reshape(3, 10) + 10  # 30 one-pixel spurious segments
    assert seg_score(fragments, ref) == 1.0 and det_score(fragments, ref) == pytest.approx(0.25)
    fragments[2, 4:] = np.arange(6) + 50  # 41 spurious cost more than 40: DET stops at 0
    fragments[4, 5:] = np.arange(5) + 60
    assert seg_score(fragments, ref) == 1.0 and det_score(fragments, ref) == 0.0
    with pytest.raises(ValueError, match="no objects"):
        det_score(np.ones(3, int), np.zeros(3, int))


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


def test_simple_points_match_component_counts_on_all_256_neighbourhoods():
    """Brute force: flipping the centre of a 3 x 3 patch keeps the number of 4-connected foreground
    and of 8-connected background components of the patch, for both values of the centre."""
    four, eight = ndimage.generate_binary_structure(2, 1), ndimage.generate_binary_structure(2, 2)

    def counts(patch):
        return ndimage.label(patch, four)[1], ndimage.label(~patch, eight)[1]

    seen = set()
    for ring in itertools.product([False, True], repeat=8):
        patch = np.array([*ring[:4], False, *ring[4:]]).reshape(3, 3)
        code = int(neighbour_codes(patch)[1, 1])
        seen.add(code)
        with_centre = patch.copy()
        with_centre[1, 1] = True
        assert SIMPLE_POINT[code] == (counts(patch) == counts(with_centre)), ring
    assert len(seen) == 256 and SIMPLE_POINT.sum() == 116


def fiji_warp(truth, target, priority):
    """Fiji's simplePointWarp2d as written there: full passes over the differing pixels sorted by
    decreasing priority (stable, column-major scan), until a pass flips nothing."""
    image, target, priority = np.pad(truth, 1), np.pad(target, 1), np.pad(priority, 1)
    while True:
        wrong = [(y, x) for x in range(image.shape[1]) for y in range(image.shape[0])]
        wrong = sorted((p for p in wrong if image[p] != target[p]), key=lambda p: -priority[p])
        flips = 0
        for y, x in wrong:
            if SIMPLE_POINT[neighbour_codes(image[y - 1 : y + 2, x - 1 : x + 2])[1, 1]]:
                image[y, x] = not image[y, x]
                flips += 1
        if flips == 0:
            return image[1:-1, 1:-1]


@pytest.mark.parametrize("seed", range(12))
def test_warping_queue_matches_fiji_full_passes(seed):
    """The queue reproduces Fiji's pass order exactly (the order changes the result: ties
    included by rounding the probabilities)."""
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(6, 24, 2))
    truth = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5
    prob = ndimage.gaussian_filter(rng.random(shape), 1.0) + rng.normal(0, 0.1, shape)
    prob = np.clip(np.round(prob * 8) / 8 if seed % 2 else prob, 0, 1).astype(np.float32)
    target = prob.astype(np.float64) > 0.5
    priority = np.abs(prob.astype(np.float64) - 0.5).astype(np.float32)
    fast = metrics._warp_slice(truth, target, priority, np.ones(shape, bool))
    np.testing.assert_array_equal(fast, fiji_warp(truth, target, priority))


N = 43 * 43  # pixels of cells()
ZERO = {name: 0 for name in metrics.TOPOLOGICAL_ERRORS}


def topology(result):
    """The nonzero pixel and error counts of a warping_error result."""
    keys = [f"{name}_pixels" for name in ZERO] + [f"{name}s" for name in ZERO]
    return {key: result[key] for key in keys if result[key]}


def shifted(image, dy, dx):
    """``image`` moved by (dy, dx), the edge rows/columns repeated where it leaves a gap."""
    padded = np.pad(image, ((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))), mode="edge")
    return padded[
        max(-dy, 0) : padded.shape[0] - max(dy, 0), max(-dx, 0) : padded.shape[1] - max(dx, 0)
    ]


@pytest.mark.parametrize("move", [(0, 1), (0, 2), (1, 0), (2, 2), (-2, 1)])
def test_warping_ignores_shifted_boundaries(move):
    truth = cells()
    prob = shifted((truth > 0).astype(np.float32), *move)
    assert np.count_nonzero((prob > 0.5) != (truth > 0)) >= 40  # the pixel error sees it
    result = warping_error(prob, truth)
    assert result["warping_error"] == 0.0 and result["mismatch_error"] == 0.0
    assert topology(result) == {}
    thinner = ndimage.binary_erosion(truth > 0, iterations=2)  # membranes 4 px wider
    assert topology(warping_error(thinner, truth)) == {}


def hand_cases():
    """Each case: (prediction, what remains after warping cells() onto it), counted by hand."""
    cell = (cells() > 0).astype(np.float32)
    split, split2, merged, holed, removed, added = (cell.copy() for _ in range(6))
    split[10, :20] = 0  # a 1-px membrane across cell 1: its last pixel cannot go
    split2[10:12, :20] = 0  # 2 px thick: a 2-px bridge remains, one error
    merged[5:10, 20:23] = 1  # a 5-px gap in the 3-px membrane of cells 1, 2: one column remains
    holed[30:32, 30:32] = 0  # a 2 x 2 hole in cell 4: no pixel of it can go
    removed[23:, :20] = 0  # cell 3 gone: it shrinks to one pixel
    added[21, 21] = 1  # a 1-px object where the membranes cross
    return {
        "split": (split, {"split_pixels": 1, "splits": 1}),
        "split2": (split2, {"split_pixels": 2, "splits": 1}),
        "merger": (merged, {"merger_pixels": 5, "mergers": 1}),
        "hole": (holed, {"hole_addition_pixels": 4, "hole_additions": 1}),
        "removed": (removed, {"object_deletion_pixels": 1, "object_deletions": 1}),
        "added": (added, {"object_addition_pixels": 1, "object_additions": 1}),
    }


@pytest.mark.parametrize("case", ["split", "split2", "merger", "hole", "removed", "added"])
def test_warping_counts_topological_errors(case):
    prob, expected = hand_cases()[case]
    result = warping_error(prob, cells())
    assert topology(result) == expected
    moved = sum(v for k, v in expected.items() if k.endswith("_pixels"))
    assert result["mismatch_error"] == moved / N
    splits_and_mergers = expected.get("split_pixels", 0) + expected.get("merger_pixels", 0)
    assert result["warping_error"] == splits_and_mergers / N  # holes and objects cost nothing
    assert result["pixels"] == N
    assert warping_error(prob.T, cells().T) == result  # the mirrored image: the same counts


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("split", {"merger_pixels": 20, "mergers": 1}),  # the whole line would join them
        ("merger", {"split_pixels": 3, "splits": 1}),  # a 3-px row across the bridge
        ("hole", {"hole_deletion_pixels": 1, "hole_deletions": 1}),
        ("removed", {"object_addition_pixels": 400, "object_additions": 1}),
        ("added", {"object_deletion_pixels": 1, "object_deletions": 1}),
    ],
)
def test_warping_symmetric_cases_agree(case, expected):
    """Ground truth and prediction swapped: the error changes class (split <-> merger, addition
    <-> deletion) and keeps its count; the pixels differ, as warping is asymmetric (Jain et al.)."""
    prob, forward = hand_cases()[case]
    backward = topology(warping_error(cells() > 0, prob.astype(np.uint8)))
    assert backward == expected
    assert sorted(v for k, v in forward.items() if not k.endswith("_pixels")) == sorted(
        v for k, v in backward.items() if not k.endswith("_pixels")
    )


def test_warping_pools_slices_and_limits_distance():
    cases = hand_cases()
    stack = np.stack([cases["split"][0], cases["merger"][0]])
    result = warping_error(stack, np.stack([cells(), cells()]))
    assert result["warping_error"] == (1 + 5) / (2 * N) and result["pixels"] == 2 * N
    assert (result["splits"], result["mergers"]) == (1, 1)
    # moved right by 1: cells 2 and 4 lose their first column (40 px) and 1, 3 gain one; the
    # cells may not shrink when only background pixels may move
    prob = shifted((cells() > 0).astype(np.float32), 0, 1)
    assert warping_error(prob, cells(), mask_distance=1.0)["mismatch_error"] == 0.0
    assert warping_error(prob, cells(), mask_distance=0.5)["mismatch_error"] == 40 / N


def test_warping_scores_threshold_sweep():
    truth = cells()
    prob = (truth > 0).astype(np.float32)
    prob[:20, 20:23] = 0.35  # a faint membrane between cells 1 and 2: merged below t = 0.4
    faint = warping_scores(prob, truth, thresholds=[0.3])
    # the membrane is 3 px wide: the cells grow across two columns, the third (20 px) remains
    assert faint == {
        "warping_error": 20 / N,
        "warping_error_threshold": 0.3,
        "warping_splits": 0,
        "warping_mergers": 1,
    }
    assert warping_scores(prob, truth) == {
        "warping_error": 0.0,
        "warping_error_threshold": 0.4,  # the lowest of the best
        "warping_splits": 0,
        "warping_mergers": 0,
    }
    # t = 1.0 leaves no cell: every object deleted, no split or merger; it is left out
    assert warping_error(prob, truth, threshold=1.0)["warping_error"] == 0.0
    assert warping_scores(prob, truth, thresholds=[0.3, 1.0]) == faint
    with pytest.raises(ValueError, match="no pixel"):
        warping_scores(np.zeros_like(prob), truth)
    with pytest.raises(ValueError, match="differ"):
        warping_error(prob[:-1], truth)


def test_warping_on_isbi_labels(isbi_dir):
    """Real ground truth (slices 25-29, framed by 2 px of membrane so nothing leaves the image):
    against itself and against itself moved by one pixel, the warping error is exactly 0, though
    tens of thousands of pixels differ."""
    folder = isbi_dir / "zhixuhao_unet/data/membrane/train/label"
    truth = np.stack([read_image(folder / f"{z}.png") for z in range(25, 30)])
    truth = np.pad(truth, ((0, 0), (2, 2), (2, 2)))
    assert set(np.unique(truth)) == {0, 255}
    same = warping_error(truth / 255.0, truth)
    assert same["mismatch_error"] == 0.0 and topology(same) == {}
    for move in [(1, 0), (0, -1)]:
        moved = np.roll(truth, move, axis=(1, 2))
        assert np.count_nonzero(moved != truth) > 50_000
        result = warping_error(moved / 255.0, truth)
        assert result["mismatch_error"] == 0.0 and topology(result) == {}


def test_pixel_errors_by_distance_hand_case():
    truth = np.ones((10, 10), np.uint8)
    truth[:, 4:6] = 0  # a membrane 2 px wide between two cells
    cell = np.ones((10, 10), bool)
    cell[:, 5:7] = False  # the same membrane, 1 px to the right
    cell[5, 1] = False  # a speck in the left cell, 3 px from the membrane
    errors = metrics.pixel_errors_by_distance(cell, truth)
    assert errors["false_positive"].tolist() == [0, 10, 0, 0]  # column 4: membrane called cell
    assert errors["false_negative"].tolist() == [0, 10, 0, 1]  # column 6 and the speck
    assert (errors["true_positive"], errors["positive"], errors["interface"]) == (69, 80, 20)
    plain = 1 - pixel_fscores(cell.astype(float), truth, [0.5])[0]
    assert metrics.pixel_error_beyond(errors, 0) == pytest.approx(plain, abs=1e-15)
    assert metrics.pixel_error_beyond(errors, 1) == pytest.approx(1 - 138 / 139)
    assert metrics.pixel_error_beyond(errors, 3) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_errors_by_distance_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    truth = ndimage.gaussian_filter(rng.normal(size=(2, 24, 20)), (0, 2, 2)) > 0
    cell = rng.random(truth.shape) < 0.5
    known = rng.random(truth.shape) < 0.8
    errors = metrics.pixel_errors_by_distance(cell, truth, known)
    expected = {"false_positive": [], "false_negative": []}
    for z, y, x in zip(*np.nonzero((cell != truth) & known), strict=True):
        other = np.argwhere(truth[z] != truth[z, y, x])
        d = int(np.abs(other - [y, x]).max(axis=1).min())
        expected["false_negative" if truth[z, y, x] else "false_positive"].append(d)
    for kind, distances in expected.items():
        counts = np.bincount(distances, minlength=errors[kind].size)
        assert errors[kind].tolist() == counts.tolist()
    # unknown pixels are neither true nor false: zero in both, they drop out of the F1
    plain = 1 - pixel_fscores(np.where(known, cell, 0), np.where(known, truth, 0), [0.5])[0]
    assert errors["true_positive"] == (cell & truth & known).sum()
    assert metrics.pixel_error_beyond(errors, 0) == pytest.approx(plain, abs=1e-12)


def test_pixel_errors_by_distance_needs_an_interface():
    with pytest.raises(ValueError, match="one class only"):
        metrics.pixel_errors_by_distance(np.ones((4, 4), bool), np.ones((4, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.pixel_errors_by_distance(np.ones((4, 4), bool), np.ones((4, 5)))


def test_thinned_v_rand_is_the_isbi_protocol_on_components():
    """The thinned V_rand of the components of a binary map is isbi_scores' V_rand of that map
    at the same threshold (which thins both on its own path); distinct from the unthinned one."""
    rng = np.random.default_rng(3)
    truth = metrics.components(rng.random((3, 20, 20)) > 0.3)
    cell = rng.random((3, 20, 20)) > 0.4
    expected = metrics.isbi_scores(cell.astype(np.float32), truth, thresholds=[0.5])["v_rand"]
    assert metrics.thinned_v_rand(metrics.components(cell), truth) == pytest.approx(expected)
    assert metrics.thinned_v_rand(truth, truth) == 1.0


def test_thinned_v_rand_scores_known_pixels_only():
    """Thinning grows objects into pixels where the truth is unknown; ``known`` keeps them out:
    a labelling that agrees with the truth wherever it is known scores 1."""
    truth = np.zeros((1, 8, 8), np.int64)
    truth[0, :, :3], truth[0, :, 4:] = 1, 2  # two objects, a membrane column between them
    seg = truth.copy()
    seg[0, :, 6:] = 3  # a third object where the truth is unknown
    known = np.ones(truth.shape, bool)
    known[0, :, 6:] = False
    assert metrics.thinned_v_rand(seg, truth, known) == 1.0
    assert metrics.thinned_v_rand(seg, truth) < 1.0
