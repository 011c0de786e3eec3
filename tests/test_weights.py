"""Weight maps (Eq. 2): hand-computed cases, the naive reference, invariances, the gap helper."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import run_rule_script
from scipy import ndimage

from unetpipe.cli import main
from unetpipe.config import load_config
from unetpipe.weightmaps import write_weights
from unetpipe.weights import (
    border_margin,
    class_weight_map,
    separate_instances,
    training_labels,
    training_labels_box,
    training_volume_labels,
    weight_map,
)


def naive_border(labels: np.ndarray, w0: float, sigma: float, spacing=None) -> np.ndarray:
    """The reference: one full-image distance transform per cell, sorted per pixel."""
    ids = [i for i in np.unique(labels) if i > 0]
    dist = np.sort([ndimage.distance_transform_edt(labels != i, sampling=spacing) for i in ids], 0)
    border = w0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * sigma**2))
    return np.where(labels == 0, border, 0.0)


def voronoi(
    shape: tuple[int, ...], cells: int, seed: int, membrane: bool = True, radius: float = np.inf
) -> np.ndarray:
    """Random Voronoi cells (ids 1..cells), separated by one-pixel membranes (0) if asked, and
    clipped to ``radius`` around their seeds (so that cells lie at all distances)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.uint32)
    seeds[tuple(rng.integers(0, n, cells) for n in shape)] = np.arange(1, cells + 1)
    dist, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(nearest)]
    labels[dist > radius] = 0
    if membrane:
        edge = np.zeros(shape, bool)
        for axis in range(len(shape)):
            step = np.diff(labels, axis=axis) != 0
            edge[(slice(None),) * axis + (slice(1, None),)] |= step
        labels[edge] = 0
    return labels


def two_squares() -> np.ndarray:
    labels = np.zeros((40, 50), np.uint16)
    labels[10:20, 10:20] = 1
    labels[10:20, 26:36] = 2
    return labels


def test_two_squares_by_hand():
    w = weight_map(two_squares(), w0=10.0, sigma=5.0, class_weights=None)
    term = lambda d: 10.0 * math.exp(-(d**2) / 50.0)  # noqa: E731
    # Between the squares (rows 10..19, columns 20..25) d1 + d2 = 1 + 6 = 2 + 5 = ... = 7.
    np.testing.assert_allclose(w[10:20, 20:26], 1 + term(7.0), rtol=1e-6)
    # Above square 1: 5 px to it, sqrt(5^2 + 11^2) to the corner (10, 26) of square 2.
    assert w[5, 15] == pytest.approx(1 + term(5 + math.sqrt(146)), rel=1e-6)
    # Diagonal from square 2's corner (19, 35): sqrt(2), and to square 1's corner (19, 19): 17.
    assert w[20, 36] == pytest.approx(1 + term(math.sqrt(2) + math.sqrt(1 + 17**2)), rel=1e-6)
    assert np.all(w[two_squares() > 0] == 1.0)  # no border term on cells


def test_balanced_and_given_class_weights():
    labels = two_squares()
    n, cells = labels.size, np.count_nonzero(labels)
    wc = class_weight_map(labels, "balanced")
    assert wc.mean() == pytest.approx(1.0, rel=1e-6)
    assert wc[0, 0] == pytest.approx(n / (2 * (n - cells)), rel=1e-6)
    assert wc[12, 12] == pytest.approx(n / (2 * cells), rel=1e-6)
    given = class_weight_map(labels, {"0": 0.5, "1": 3})
    assert given[0, 0] == 0.5 and given[12, 12] == 3.0
    w = weight_map(labels, class_weights="balanced")
    np.testing.assert_allclose(w - wc, weight_map(labels, class_weights=None) - 1, atol=1e-6)
    assert np.all(class_weight_map(np.zeros((4, 4), int), "balanced") == 1.0)
    with pytest.raises(ValueError, match="classes 0 and 1"):
        class_weight_map(labels, {0: 1.0})
    with pytest.raises(ValueError, match="balanced"):
        class_weight_map(labels, "inverse")


def test_fewer_than_two_cells_has_no_border_term():
    one = np.zeros((30, 30), np.uint8)
    one[5:10, 5:10] = 7
    np.testing.assert_array_equal(weight_map(one, class_weights=None), np.ones((30, 30)))
    np.testing.assert_array_equal(weight_map(np.zeros((8, 8), np.int32)), np.ones((8, 8)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference_on_voronoi(seed):
    labels = voronoi((96, 112), cells=12, seed=seed, radius=6.0)
    reference = 1.0 + naive_border(labels, 10.0, 5.0)
    fast = weight_map(labels, class_weights=None)
    assert fast.dtype == np.float32
    assert np.abs(fast - reference).max() <= 1e-4 * 10.0
    # The box bound is the only approximation: a tiny tolerance makes it exact to float32.
    exact = weight_map(labels, class_weights=None, tolerance=1e-15)
    np.testing.assert_allclose(exact, reference, rtol=1e-6, atol=1e-6)


def test_border_margin_is_where_the_term_reaches_the_tolerance():
    margin = border_margin(10.0, 5.0, 1e-4)
    assert 10.0 * math.exp(-(margin**2) / 50.0) == pytest.approx(1e-3)


def test_relabelling_changes_nothing():
    labels = voronoi((80, 80), cells=20, seed=3, radius=8.0)
    permuted = np.random.default_rng(0).permutation(21)[1:].astype(np.uint32) + 1
    relabelled = np.concatenate([[0], permuted])[labels]
    sparse = np.where(labels > 0, labels.astype(np.int64) * 1_000_003 + 17, 0)
    base = weight_map(labels)
    np.testing.assert_array_equal(weight_map(relabelled), base)
    np.testing.assert_array_equal(weight_map(sparse), base)


def test_3d_distances_with_voxel_size():
    labels = voronoi((10, 28, 28), cells=8, seed=4, radius=5.0)
    spacing = (2.5, 1.0, 1.0)
    reference = 1.0 + naive_border(labels, 10.0, 5.0, spacing)
    fast = weight_map(labels, class_weights=None, spacing=spacing)
    assert np.abs(fast - reference).max() <= 1e-3


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros((5, 5), np.float32), "integer"),
        (np.zeros((5, 5), bool), "integer"),
        (np.full((5, 5), -1, np.int16), "non-negative"),
        (np.zeros(5, np.uint8), "2D or 3D"),
    ],
)
def test_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        weight_map(labels)


@pytest.mark.parametrize("gap", [1, 2, 3, 4])
def test_gap_between_touching_cells_has_the_given_width(gap):
    labels = np.zeros((20, 30), np.uint32)
    labels[2:18, 2:15] = 1
    labels[2:18, 15:28] = 2
    out = separate_instances(labels, gap)
    row = out[10]
    background = np.flatnonzero(row[2:28] == 0)
    assert len(background) == gap and np.all(np.diff(background) == 1)
    assert set(np.unique(out)) == {0, 1, 2}
    # Only the contact changes: each cell loses the pixels within half the gap of the other.
    changed = out != labels
    assert np.array_equal(np.flatnonzero(changed.any(axis=0)), 15 - (gap + 1) // 2 + np.arange(gap))


def test_gap_separates_all_cells_and_leaves_distant_ones():
    touching = voronoi((64, 64), cells=15, seed=5, membrane=False)
    for gap in (1, 2, 3):
        out = separate_instances(touching, gap)
        assert set(np.unique(out)) <= set(np.unique(touching)) | {0}
        assert np.all((out == touching) | (out == 0))
        # No two cells are adjacent, even diagonally: 8-connected components are the cells.
        _, components = ndimage.label(out > 0, structure=np.ones((3, 3)))
        assert components == len(np.unique(out)) - 1
    apart = two_squares()  # 7 px apart: only a reach ceil(gap / 2) of 7 touches them
    np.testing.assert_array_equal(separate_instances(apart, 12), apart)
    assert np.count_nonzero(separate_instances(apart, 13) != apart) == 10
    np.testing.assert_array_equal(separate_instances(touching, 0), touching)
    with pytest.raises(ValueError, match="gap"):
        separate_instances(touching, -1)


def make_group(path: Path, labels: np.ndarray, raw_shape=None) -> Path:
    group = zarr.open_group(path, mode="w")
    group.attrs.update({"voxel_size": [2.0, 1.0, 1.0], "splits": {"train": [0], "val": [1]}})
    raw = group.create_array("raw", shape=raw_shape or labels.shape, dtype="uint8")
    raw[...] = 1
    group.create_array("labels", data=labels, chunks=(1, *labels.shape[1:]))
    return path


@pytest.mark.parametrize("threads", [1, 2])
def test_write_weights_into_the_group(tmp_path, threads):
    labels = np.stack([voronoi((48, 40), cells=8, seed=s) for s in range(3)])
    path = make_group(tmp_path / "data.zarr", labels)
    params = {"w0": 8.0, "sigma": 4.0, "separation_gap": 0, "class_weights": {0: 1.0, 1: 2.0}}
    write_weights(path, params, threads=threads)
    weights = zarr.open_group(path, mode="r")["weights"]
    assert weights.dtype == np.float32 and weights.chunks == (1, 48, 40)
    expected = [weight_map(s, 8.0, 4.0, {0: 1.0, 1: 2.0}) for s in labels]
    np.testing.assert_array_equal(weights[...], np.stack(expected))
    assert weights.attrs["w0"] == 8.0 and weights.attrs["class_weights"] == {"0": 1.0, "1": 2.0}
    assert sorted(p.name for p in path.iterdir()) == ["labels", "raw", "weights", "zarr.json"]


def test_write_weights_3d_and_gap(tmp_path):
    labels = voronoi((6, 30, 30), cells=6, seed=6, membrane=False)
    path = make_group(tmp_path / "data.zarr", labels)
    write_weights(path, {"mode": "3d", "separation_gap": 2, "class_weights": None})
    expected = weight_map(separate_instances(labels, 2), class_weights=None, spacing=(2, 1, 1))
    group = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(group["weights"][...], expected)
    # A 3D net's training labels of slices 2-3: the gap in 3D, as the weights saw it.
    np.testing.assert_array_equal(
        training_volume_labels(group, 2, 4), separate_instances(labels, 2)[2:4]
    )
    assert not np.array_equal(
        training_volume_labels(group, 2, 4), separate_instances(labels[2:4], 2)
    )  # (the neighbouring slices count)


def test_training_labels_carry_the_weight_maps_gap(tmp_path):
    labels = voronoi((2, 30, 30), cells=6, seed=3, membrane=False)
    path = make_group(tmp_path / "data.zarr", labels)
    write_weights(path, {"separation_gap": 2})
    group = zarr.open_group(path, mode="r")
    separated = training_labels(group, 1)
    np.testing.assert_array_equal(separated, separate_instances(labels[1], 2))
    assert (separated == 0).sum() > (labels[1] == 0).sum()  # the gap is background in targets...
    gap = (separated == 0) & (labels[1] > 0)
    assert np.all(group["weights"][1][gap] > 1)  # ...where the map puts its border weight


def test_cli_and_rule_weights_alike(tmp_path):
    """``unetpipe weights`` and rule weights (its script) run one stage: the same map and
    attributes for the same settings."""
    labels = voronoi((3, 40, 36), cells=8, seed=2, membrane=False)
    cli, rule = (make_group(tmp_path / name / "data.zarr", labels) for name in ("cli", "rule"))
    settings = {"w0": 6.0, "sigma": 3.0, "class_weights": None, "separation_gap": 2}
    run_rule_script(
        "weights",
        load_config({"weights": settings}),
        tmp_path,
        input={"group": rule / "zarr.json", "labels": rule / "labels"},
        output=[str(rule / "weights")],
        threads=2,
    )
    args = ["weights", str(cli), "--w0", "6", "--sigma", "3", "--class-weights", "none"]
    assert main([*args, "--separation-gap", "2", "--threads", "2"]) == 0
    ours, theirs = (zarr.open_array(path / "weights", mode="r") for path in (cli, rule))
    np.testing.assert_array_equal(ours[:], theirs[:])
    assert ours.attrs.asdict() == theirs.attrs.asdict()
    assert theirs.attrs["separation_gap"] == 2 and theirs.attrs["class_weights"] is None


@pytest.mark.parametrize(
    "labels, raw_shape, message",
    [
        (np.full((2, 8, 8), -3, np.int32), None, "non-negative"),
        (np.ones((2, 8, 8), np.float32), None, "integer"),
        (np.ones((2, 8, 8), np.uint32), (2, 8, 9), "differs"),
    ],
)
def test_write_weights_bad_input_writes_nothing(tmp_path, labels, raw_shape, message):
    path = make_group(tmp_path / "data.zarr", labels, raw_shape)
    with pytest.raises(ValueError, match=message):
        write_weights(path, threads=2)
    assert sorted(p.name for p in path.iterdir()) == ["labels", "raw", "zarr.json"]


def test_real_isbi_labels_match_the_reference(isbi_dir):
    from PIL import Image

    png = isbi_dir / "zhixuhao_unet" / "data" / "membrane" / "train" / "label" / "0.png"
    labels, _ = ndimage.label(np.asarray(Image.open(png))[:256, :256] == 255)
    reference = 1.0 + naive_border(labels, 10.0, 5.0)
    assert np.abs(weight_map(labels, class_weights=None) - reference).max() <= 1e-3


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_training_labels_of_any_box_equal_that_crop_of_the_whole_stack(tmp_path, mode):
    """A 3D net reading a volume box by box sees the same training labels as one holding the
    whole stack: the separation gap reads the pixels it reaches around the box."""
    labels = voronoi((6, 30, 30), cells=8, seed=7, membrane=False)
    path = make_group(tmp_path / "data.zarr", labels)
    write_weights(path, {"mode": mode, "separation_gap": 3, "class_weights": None})
    group = zarr.open_group(path, mode="r")
    whole = training_volume_labels(group, 0, 6)
    planes = [separate_instances(plane, 3) for plane in labels]
    np.testing.assert_array_equal(
        whole, separate_instances(labels, 3) if mode == "3d" else np.stack(planes)
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        start = [int(rng.integers(0, n)) for n in labels.shape]
        stop = [int(rng.integers(a + 1, n + 1)) for a, n in zip(start, labels.shape, strict=True)]
        box = tuple(map(slice, start, stop))
        np.testing.assert_array_equal(training_labels_box(group, start, stop), whole[box])
