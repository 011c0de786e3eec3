import itertools

import numpy as np
import pytest

from unetpipe.affinities import (
    OFFSETS_2D,
    OFFSETS_3D,
    affinities_of_view,
    affinity_targets,
    cell_map,
    check_offsets,
    default_offsets,
    dihedral_channels,
    is_attractive,
    network_config,
)
from unetpipe.model import UNet


def brute_force(labels, offsets, mask=None):
    """Affinities pixel by pixel, in plain loops."""
    known = np.ones(labels.shape, bool) if mask is None else mask
    targets = np.zeros((len(offsets), *labels.shape), np.float32)
    valid = np.zeros((len(offsets), *labels.shape), bool)
    for k, offset in enumerate(offsets):
        for x in itertools.product(*(range(n) for n in labels.shape)):
            y = tuple(a + o for a, o in zip(x, offset, strict=True))
            if not all(0 <= v < n for v, n in zip(y, labels.shape, strict=True)):
                continue
            valid[(k, *x)] = known[x] and known[y]
            targets[(k, *x)] = float(labels[x] == labels[y] != 0 and known[x] and known[y])
    return targets, valid


def test_two_touching_cells_by_hand():
    # Cells 1 and 2 touch between columns 1 and 2; column 4 is background (membrane).
    labels = np.array([[1, 1, 2, 2, 0], [1, 1, 2, 2, 0]])
    targets, valid = affinity_targets(labels, [[0, -1], [-1, 0], [0, -2]])
    np.testing.assert_array_equal(targets[0], [[0, 1, 0, 1, 0], [0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(valid[0], [[0, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(targets[1], [[0, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(valid[1], [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(targets[2], [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(valid[2], [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1]])


def test_background_is_no_instance():
    labels = np.zeros((3, 3), np.uint32)
    targets, valid = affinity_targets(labels, [[0, -1], [-1, 0]])
    assert not targets.any()
    assert valid[:, 1:, 1:].all()


@pytest.mark.parametrize("dims", [2, 3])
def test_matches_brute_force_with_mask(dims):
    rng = np.random.default_rng(dims)
    shape = (4, 9, 11)[-dims:]
    labels = rng.integers(0, 3, shape)
    mask = rng.random(shape) > 0.2
    offsets = [[-1, 0], [0, -1], [2, -3], [-3, 4], [0, 12]] if dims == 2 else OFFSETS_3D
    targets, valid = affinity_targets(labels, offsets, mask)
    expected_targets, expected_valid = brute_force(labels, offsets, mask)
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_array_equal(targets, expected_targets)
    assert targets.dtype == np.float32 and valid.dtype == bool


def test_offsets_checked():
    assert check_offsets(default_offsets(2), 2) == OFFSETS_2D
    assert default_offsets(3) == OFFSETS_3D and default_offsets(2) is not OFFSETS_2D
    assert [is_attractive(o) for o in OFFSETS_2D[:3]] == [True, True, False]
    for bad in ([], [[-1, 0], [0]], [[0, 0], [-1, 0]], [[-1, 0], [-1, 0]], [[-3, 0]]):
        with pytest.raises(ValueError):
            check_offsets(bad)
    with pytest.raises(ValueError, match="3 axes"):
        check_offsets(OFFSETS_2D, 3)
    with pytest.raises(ValueError, match="mask"):
        affinity_targets(np.zeros((3, 3)), [[-1, 0]], np.ones((3, 4)))


def test_network_config_of_the_model_section():
    section = {"depth": 3, "base_channels": 4, "target": "boundary", "offsets": None}
    boundary = UNet(**network_config(section))
    assert boundary.config == UNet(depth=3, base_channels=4).config  # no new key: the paper's
    affinity = UNet(**network_config(section | {"target": "affinities"}))
    assert affinity.config["offsets"] == OFFSETS_2D and affinity.config["n_classes"] == 10
    probs = np.random.default_rng(0).random((10, 4, 4))
    np.testing.assert_allclose(cell_map(probs, affinity.config), probs[:2].mean(axis=0))
    np.testing.assert_array_equal(cell_map(probs, boundary.config), probs[1])
    with pytest.raises(ValueError, match="target is boundary"):
        network_config(section | {"offsets": [[-1, 0]]})
    with pytest.raises(ValueError, match="3 axes"):
        network_config(section | {"target": "affinities", "dims": 3, "offsets": [[-1, 0]]})


DIAGONALS = [[-1, 0], [0, -1], [-9, -9], [9, -9]]


def test_dihedral_channels_by_hand():
    """A view flipped in y maps [-1, 0] to [1, 0] (the first channel, reversed) and swaps the two
    diagonals; a transposed view swaps y and x and reverses the [9, -9] diagonal."""
    assert dihedral_channels(DIAGONALS, (0, 0), False) == [(k, False) for k in range(4)]
    assert dihedral_channels(DIAGONALS, (1, 0), False) == [
        (0, True),
        (1, False),
        (3, False),
        (2, False),
    ]
    assert dihedral_channels(DIAGONALS, (0, 0), True) == [
        (1, False),
        (0, False),
        (2, False),
        (3, True),
    ]
    assert dihedral_channels(DIAGONALS, (1, 1), False) == [
        (0, True),
        (1, True),
        (2, True),
        (3, True),
    ]
    with pytest.raises(ValueError, match=r"offset \[4, -7\] to one that model.offsets"):
        dihedral_channels([[-1, 0], [0, -1], [4, -7]], (0, 0), True)


@pytest.mark.parametrize("offsets", [OFFSETS_2D, OFFSETS_3D], ids=["2d", "3d"])
def test_every_view_of_perfect_affinities_gives_the_image_affinities(offsets):
    """The affinities of each flipped/transposed view of a label image, mapped back, are the
    image's own affinities (``affinity_targets`` as the independent reference)."""
    dims = len(offsets[0])
    margin = [max(abs(o[a]) for o in offsets) for a in range(dims)]
    size = (3, 20, 17)[3 - dims :]
    grown = [n + 2 * m for n, m in zip(size, margin, strict=True)]
    labels = np.random.default_rng(2).integers(0, 4, size=grown)
    inner = tuple(slice(m, m + n) for m, n in zip(margin, size, strict=True))
    expected = affinity_targets(labels, offsets)[0][(slice(None), *inner)]
    for flips in itertools.product((0, 1), repeat=2):
        for swap in (False, True):
            axes = [dims - 2 + i for i, f in enumerate(flips) if f]
            view = np.flip(labels, axes) if axes else labels
            view = np.swapaxes(view, -1, -2) if swap else view
            back = affinity_targets(view, offsets)[0]
            back = np.swapaxes(back, -1, -2) if swap else back
            back = np.flip(back, [a + 1 for a in axes]) if axes else back
            got = affinities_of_view(back, offsets, flips, swap, margin, size)
            np.testing.assert_array_equal(got, expected, err_msg=f"{flips} {swap}")
