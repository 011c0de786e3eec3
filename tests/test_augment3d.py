"""3D augmentation (issue 34): the tile, the labels that follow the image, the coarse lattice of
the elastic field in physical units, reproducibility."""

import itertools

import numpy as np
import pytest

from unetpipe.augment import sample_rng, upsampling_matrix
from unetpipe.augment3d import augment_volume, interpolate, sampling_map
from unetpipe.sections import AugmentConfig

OFF = {name: {"enabled": False} for name in ("elastic", "rotation", "flip", "shift", "gray")}


def volume(shape=(12, 40, 44), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, 7, size=shape).astype(np.uint32)
    weights = rng.random(shape).astype(np.float32)
    return image, labels, weights


def test_without_deformation_a_tile_is_a_crop_mirrored_past_the_border():
    image, labels, weights = volume()
    tile, label, weight = augment_volume(
        image,
        labels,
        weights,
        input_size=(8, 20, 20),
        output_size=(4, 10, 10),
        params=OFF,
        rng=sample_rng(0, 0),
        origin=(-3, 2, 30),
    )
    pad = [(3, 0), (0, 0), (0, 6)]
    np.testing.assert_array_equal(tile, np.pad(image, pad, mode="reflect")[0:8, 2:22, 30:50])
    np.testing.assert_array_equal(label, np.pad(labels, pad, mode="reflect")[2:6, 7:17, 35:45])
    np.testing.assert_array_equal(weight, np.pad(weights, pad, mode="reflect")[2:6, 7:17, 35:45])


def test_labels_follow_the_image_and_the_sample_is_a_function_of_its_seed():
    shape = (20, 64, 64)
    axes = np.meshgrid(*map(np.arange, shape), indexing="ij")
    labels = (axes[0] * 10000 + axes[1] * 100 + axes[2]).astype(np.uint32)  # (z, y, x) of a voxel
    weights = np.ones(shape, np.float32)
    params = {"gray": {"enabled": False}, "interpolation": "linear", "elastic": {"sigma": 2.0}}
    size = {"input_size": (8, 24, 24), "output_size": (8, 24, 24), "origin": (6, 20, 20)}
    # The same sample of three images, each one coordinate (linear: sampled exactly).
    where = [
        augment_volume(
            axis.astype(np.float32), labels, weights, params=params, rng=sample_rng(3, 7), **size
        )
        for axis in axes
    ]
    point = np.stack([w[0] for w in where])
    label = where[0][1].astype(np.int64)
    nearest = np.stack([label // 10000, label // 100 % 100, label % 100])
    # Each label is that of the voxel nearest to the point the image was sampled at.
    assert np.abs(nearest - point).max() <= 0.5 + 1e-4
    assert (
        np.abs(
            point
            - np.stack(np.meshgrid(*map(np.arange, (8, 24, 24)), indexing="ij"))
            - np.array([6, 20, 20])[:, None, None, None]
        ).max()
        > 1
    )  # it did deform
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    size = {"input_size": (8, 24, 24), "output_size": (4, 12, 12)}
    first = augment_volume(image, labels, weights, params=None, rng=sample_rng(3, 7), **size)
    again = augment_volume(image, labels, weights, params=None, rng=sample_rng(3, 7), **size)
    other = augment_volume(image, labels, weights, params=None, rng=sample_rng(3, 8), **size)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("grid", [3, 5])
def test_the_elastic_field_is_the_coarse_lattice_upsampled_in_physical_units(grid):
    params = AugmentConfig.from_mapping(
        {**OFF, "elastic": {"enabled": True, "grid": grid, "sigma": 6.0}}
    )
    tile, spacing = (9, 17, 21), (4.0, 1.0, 1.0)  # sections 4x the pixel size
    coords = sampling_map(tile, (0, 0, 0), params, np.random.default_rng(1), spacing)
    displacement = coords - np.stack(np.meshgrid(*map(np.arange, tile), indexing="ij"))
    coarse = np.random.default_rng(1).normal(0.0, 1.0, size=(3, grid, grid, grid))
    coarse *= np.array([6.0 / 4, 6.0, 6.0])[:, None, None, None]  # 6 px in-plane = 1.5 sections
    # At the lattice points (corners included) the field is the drawn displacement.
    points = [np.round(np.linspace(0, t - 1, grid)).astype(int) for t in tile]
    exact = [
        np.flatnonzero(np.isclose(np.linspace(0, t - 1, grid), p))
        for t, p in zip(tile, points, strict=True)
    ]
    at = displacement[:, points[0]][:, :, points[1]][:, :, :, points[2]]
    np.testing.assert_allclose(
        at[:, exact[0]][:, :, exact[1]][:, :, :, exact[2]],
        coarse[:, exact[0]][:, :, exact[1]][:, :, :, exact[2]],
        atol=1e-9,
    )
    # Everywhere, the tricubic upsampling of the lattice (independently: one axis at a time).
    up = coarse
    for axis, n in enumerate(tile):
        up = np.moveaxis(
            np.tensordot(upsampling_matrix(n, grid), up, axes=(1, axis + 1)), 0, axis + 1
        )
    np.testing.assert_allclose(displacement, up, atol=1e-9)


def test_interpolation_is_exact_at_integer_points_and_mirrors_the_border():
    image, labels, _ = volume((6, 9, 7))
    points = np.stack(
        np.meshgrid(np.arange(-2, 8), np.arange(9), np.arange(-3, 7), indexing="ij")
    ).astype(float)
    padded = np.pad(image, [(2, 2), (0, 0), (3, 0)], mode="reflect")
    for order in ("nearest", "linear", "cubic"):
        np.testing.assert_allclose(interpolate(image, points, order), padded[:10], atol=1e-5)
    np.testing.assert_array_equal(
        interpolate(labels, points, "nearest"),
        np.pad(labels, [(2, 2), (0, 0), (3, 0)], mode="reflect")[:10],
    )


def test_bad_tiles_are_refused():
    image, labels, weights = volume()
    with pytest.raises(ValueError, match="must fit centred"):
        augment_volume(
            image, labels, weights, input_size=8, output_size=5, params=None, rng=sample_rng(0, 0)
        )
    with pytest.raises(ValueError, match="3D image"):
        augment_volume(
            image[0],
            labels[0],
            weights[0],
            input_size=8,
            output_size=4,
            params=None,
            rng=sample_rng(0, 0),
        )


def test_swap_axes_draws_every_permutation_of_an_isotropic_cube_and_labels_follow():
    """``rotation.swap_axes``: a rotation across z for isotropic voxels; each tile is the crop with
    its axes permuted (angle 0, no flips: exactly a transposition), the labels permuted alike."""
    image, labels, weights = volume((16, 16, 16), seed=2)
    crop = (slice(3, 13),) * 3
    params = {**OFF, "rotation": {"enabled": True, "max_degrees": 0.0, "swap_axes": True}}
    seen = set()
    for index in range(40):
        tile, label, _ = augment_volume(
            image,
            labels,
            weights,
            input_size=10,
            output_size=10,
            params=params,
            rng=sample_rng(0, index),
            origin=(3, 3, 3),
        )
        perms = [
            p
            for p in itertools.permutations(range(3))
            if np.allclose(tile, np.transpose(image[crop], p), atol=1e-5)
        ]
        assert len(perms) == 1, index
        np.testing.assert_array_equal(label, np.transpose(labels[crop], perms[0]))
        seen.add(perms[0])
    assert len(seen) == 6
    default = {**OFF, "rotation": {"enabled": True, "max_degrees": 0.0}}
    tile, _, _ = augment_volume(
        image,
        labels,
        weights,
        input_size=10,
        output_size=10,
        params=default,
        rng=sample_rng(0, 1),
        origin=(3, 3, 3),
    )
    np.testing.assert_allclose(tile, image[crop], atol=1e-5)  # unset: z stays z
    for size, spacing in (((8, 10, 10), (1.0, 1.0, 1.0)), ((10, 10, 10), (2.0, 1.0, 1.0))):
        with pytest.raises(ValueError, match="cubic tile of equal voxel sizes"):
            augment_volume(
                image,
                labels,
                weights,
                input_size=size,
                output_size=size,
                params=params,
                rng=sample_rng(0, 0),
                spacing=spacing,
            )
