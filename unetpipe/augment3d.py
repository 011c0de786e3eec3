"""Data augmentation of volumes for the 3D U-Net (Cicek et al. 2016, Section 2.2).

"Besides rotation, scaling and gray value augmentation, we apply a smooth dense deformation field
on both data and ground truth labels. For this, we sample random vectors from a normal distribution
with standard deviation of 4 in a grid with a spacing of 32 voxels in each direction and then apply
a B-spline interpolation." Here, as in 2D (:mod:`unetpipe.augment`): N(0, sigma^2) displacements
on a ``grid`` x ``grid`` x ``grid`` lattice spanning the tile, upsampled bicubically per axis;
flips of every axis, a rotation in the (y, x) plane and shifts, in physical units so that an
anisotropic stack (``spacing`` (z, y, x), e.g. 50 nm sections of 4 nm pixels) is displaced less
along z in voxels. A rotation across z only for isotropic voxels and cubic tiles, where it is asked
for (``rotation.swap_axes``: a random permutation of the axes).

The image is interpolated with a cubic B-spline (``scipy.ndimage.map_coordinates``, order 3; linear
or nearest by ``interpolation``), the labels nearest (no new values), the weights linearly, the
labels and weights only on the central output crop; past the volume's border the context is
mirrored (numpy's ``reflect``), as in Fig. 2 of the U-Net paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from unetpipe.augment import (
    checked_sizes,
    gray_variation,
    random_origin,
    upsampling_matrix,
)
from unetpipe.sections import AugmentConfig
from unetpipe.tiling import read_mirrored

_ORDER = {"nearest": 0, "linear": 1, "cubic": 3}
_MARGIN = 8  # voxels of context around the points: the cubic prefilter's reach, in practice


def sampling_map(
    tile: tuple[int, ...],
    origin: Sequence[int],
    params: AugmentConfig,
    rng: np.random.Generator,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Source coordinates (3, z, y, x) of every voxel of an input tile whose corner is ``origin``.

    Flips, a permutation of the axes (``rotation.swap_axes``), a rotation about the z axis and a
    shift (``max_px`` in-plane pixels, the same physical length along z), then the elastic
    displacement: ``sigma`` in-plane pixels (the same physical length along z) on the coarse
    lattice, upsampled bicubically along each axis.
    """
    scale = np.array([spacing[1] / spacing[0], 1.0, 1.0])  # in-plane pixels -> voxels per axis
    matrix = np.eye(3)
    if params.flip.enabled:
        matrix = matrix * rng.choice([-1.0, 1.0], size=3)
    if params.rotation.enabled and params.rotation.swap_axes:
        check_swap_axes(tile, spacing)
        matrix = np.eye(3)[rng.permutation(3)] @ matrix
    if params.rotation.enabled:
        angle = math.radians(rng.uniform(-1, 1) * params.rotation.max_degrees)
        turn = np.eye(3)
        turn[1:, 1:] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        matrix = turn @ matrix
    shift = np.zeros(3)
    if params.shift.enabled:
        shift = rng.uniform(-1, 1, size=3) * params.shift.max_px * scale
    centre = np.array([(t - 1) / 2 for t in tile])
    grid = np.stack(np.meshgrid(*(np.arange(t) for t in tile), indexing="ij")).reshape(3, -1)
    coords = matrix @ (grid - centre[:, None]) + (np.asarray(origin) + centre + shift)[:, None]
    coords = coords.reshape(3, *tile)
    if params.elastic.enabled:
        points, sigma = params.elastic.grid, params.elastic.sigma
        coarse = (
            rng.normal(0.0, 1.0, size=(3, points, points, points))
            * (sigma * scale)[:, None, None, None]
        )
        up = [upsampling_matrix(t, points) for t in tile]
        coords += np.einsum("ia,jb,kc,dabc->dijk", *up, coarse, optimize=True)
    return coords


def check_swap_axes(tile: Sequence[int], spacing: Sequence[float]) -> None:
    """ValueError unless a permutation of the axes maps a tile onto itself in physical space:
    three equal voxel sizes and a cubic tile (``augment.rotation.swap_axes``)."""
    if len(tile) != 3 or len(set(tile)) != 1 or len({float(v) for v in spacing}) != 1:
        raise ValueError(
            f"augment.rotation.swap_axes permutes the axes of 3D tiles of isotropic voxels, but "
            f"the tile is {list(tile)} and dataset.voxel_size {list(spacing)}: use a cubic tile "
            "of equal voxel sizes, or leave swap_axes unset"
        )


def interpolate(volume: np.ndarray, coords: np.ndarray, order: str) -> np.ndarray:
    """``volume`` at ``coords`` (3, ...) by nearest, linear or cubic B-spline interpolation,
    mirrored context; exact at integer coordinates."""
    low = np.floor(coords.reshape(3, -1).min(1)).astype(int) - _MARGIN
    high = np.ceil(coords.reshape(3, -1).max(1)).astype(int) + _MARGIN + 1
    crop = read_mirrored(volume, low, high)
    shifted = coords - low[:, None, None, None]
    if order == "nearest":  # round half up, as the 2D warp does
        index = tuple(np.floor(c + 0.5).astype(np.intp) for c in shifted)
        return crop[index]
    return ndimage.map_coordinates(
        crop.astype(np.float32), shifted, order=_ORDER[order], mode="mirror"
    ).astype(np.float32)


def augment_volume(
    image: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    input_size: int | Sequence[int],
    output_size: int | Sequence[int],
    params: AugmentConfig | Mapping[str, Any] | None,
    rng: np.random.Generator,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented 3D training sample from a volume (z, y, x) with its labels and weight map.

    As :func:`unetpipe.augment.augment_sample` in 3D: ``image`` is the normalised volume (numpy,
    or any array that reads the box it is sliced with: only the tile's box is read), ``params``
    the ``augment`` config section, ``origin`` the (z, y, x) input-tile corner (by default a
    random one whose output crop lies in the volume), ``spacing`` the voxel size (z, y, x).
    Returns ``(image_tile, label_tile, weight_tile)``: float32 of ``input_size``, the labels'
    dtype and float32 of ``output_size``; all randomness from ``rng``.
    """
    params = AugmentConfig.from_mapping(params)
    tile, out = checked_sizes(image, labels, weights, input_size, output_size, 3)
    if origin is None:
        origin = random_origin(rng, image.shape, tile, out)
    coords = sampling_map(tile, origin, params, rng, spacing)
    crop = [slice((t - o) // 2, (t - o) // 2 + o) for t, o in zip(tile, out, strict=True)]
    inner = (slice(None), *crop)
    image_tile = interpolate(image, coords, params.interpolation).astype(np.float32)
    label_tile = interpolate(labels, coords[inner], "nearest")
    weight_tile = interpolate(weights, coords[inner], "linear")
    if params.gray.enabled:
        image_tile = gray_variation(image_tile, params.gray, rng)
    return image_tile, label_tile, weight_tile
