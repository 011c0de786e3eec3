"""The built-in EM-like dataset (unetpipe.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label
from skimage.metrics import adapted_rand_error

from unetpipe import synthetic
from unetpipe.cli import main
from unetpipe.io import open_data, read_splits
from unetpipe.synthetic import synthetic_stack, write_synthetic


@pytest.fixture(scope="module")
def stack():
    return synthetic_stack((4, 256, 256), seed=3)


def test_deterministic_by_seed(stack):
    raw, labels = synthetic_stack((4, 256, 256), seed=3)
    np.testing.assert_array_equal(raw, stack[0])
    np.testing.assert_array_equal(labels, stack[1])
    other, _ = synthetic_stack((4, 256, 256), seed=4)
    assert np.mean(other != raw) > 0.5


def test_looks_like_isbi(stack):
    """Membrane fraction and grey values near ISBI 2012 (SOURCE.md: 21.96% membrane, mean 126,
    std 44, membranes 85 and cells 138 on average)."""
    raw, labels = stack
    assert raw.dtype == np.uint8 and labels.dtype == np.uint32
    assert 0.15 < np.mean(labels == 0) < 0.32
    assert 100 < raw.mean() < 150 and 30 < raw.std() < 60
    assert raw[labels > 0].mean() - raw[labels == 0].mean() > 40


def test_instances_touch_only_through_membrane_and_persist_in_z(stack):
    _, labels = stack
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[:, :, 1:], labels[:, :, :-1])):
        assert not np.any((a != b) & (a > 0) & (b > 0)), "different cells 4-adjacent"
    for z in range(labels.shape[0]):  # every instance is one 4-connected piece in each slice
        n_ids = np.unique(labels[z]).size - 1
        assert label(labels[z], background=0, connectivity=1).max() == n_ids
    shared = np.intersect1d(np.unique(labels[0]), np.unique(labels[1]))
    assert shared.size > 0.6 * np.unique(labels[0]).size  # sections of one volume


def test_global_threshold_does_not_solve_it(stack):
    """Best global threshold + 4-connected components: Rand F-score far from 1."""
    raw, labels = stack[0][0], stack[1][0]
    scores = [
        1 - adapted_rand_error(labels, label(raw > t, connectivity=1), ignore_labels=(0,))[0]
        for t in range(40, 220, 10)
    ]
    assert max(scores) < 0.8


def test_2d_image_and_bad_input():
    raw, labels = synthetic_stack((64, 80), seed=0)
    assert raw.shape == labels.shape == (64, 80)
    with pytest.raises(ValueError, match="shape"):
        synthetic_stack((2, 2, 64, 64))
    with pytest.raises(ValueError, match="membrane_width"):
        synthetic_stack((64, 64), cell_size=5, membrane_width=3)
    with pytest.raises(ValueError, match="noise"):
        synthetic_stack((64, 64), noise=-1)


def test_write_synthetic(tmp_path):
    path = write_synthetic(tmp_path / "d.zarr", 5, (96, 80), 1, (160, 128), seed=2, dataset="t")
    group = open_data(path)
    assert group["raw"].shape == group["labels"].shape == (5, 96, 80)
    assert group["test"].shape == group["test_labels"].shape == (1, 160, 128)
    assert group["raw"].chunks == (1, 96, 80)
    assert group["labels"].dtype == np.uint32 and group["raw"].dtype == np.uint8
    raw, labels = synthetic_stack((5, 96, 80), seed=2)
    np.testing.assert_array_equal(group["raw"][:], raw)
    np.testing.assert_array_equal(group["labels"][:], labels)
    assert read_splits(group) == {"train": [0, 1, 2, 3], "val": [4]}
    assert group.attrs["dataset"] == "t" and group.attrs["source"]["seed"] == 2
    assert group["test"].attrs["seed"] == 3


def test_write_synthetic_leaves_nothing_on_failure(tmp_path, monkeypatch):
    def fail(group, name, data, attrs=None):
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "write_array", fail)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic(tmp_path / "d.zarr", 2, (64, 64), 0, (64, 64))
    assert list(tmp_path.iterdir()) == []


def test_cli_synth(tmp_path):
    out = tmp_path / "s.zarr"
    args = ["synth", str(out), "--n-slices", "3", "--shape", "48", "64", "--test-slices", "0"]
    assert main([*args, "--seed", "5", "--val-slices", "0"]) == 0
    group = open_data(out)
    np.testing.assert_array_equal(group["raw"][:], synthetic_stack((3, 48, 64), seed=5)[0])
    assert "test" not in group and read_splits(group) == {"train": [1, 2], "val": [0]}
    assert main([*args, "--val-slices", "0", "1", "2"]) == 1
