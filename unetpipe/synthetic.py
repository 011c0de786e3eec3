"""The built-in EM-like dataset: lets the whole pipeline run with no network.

Images imitate the ISBI 2012 ssTEM slices the paper segments (Sec. 4): cells of a warped Voronoi
tessellation touch along dark membranes a few pixels thick; their interiors carry grain, vesicles,
mitochondria-like bodies and dark clumps; membranes fade in places; the slice is blurred and noisy.
Labels are uint32 instances with 0 = membrane, as in the data contract. A stack is one volume:
seeds drift from slice to slice, so a cell's cross-sections overlap in z and keep one id.
Everything is a pure function of the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.draw import ellipse
from skimage.measure import label as connected_components

from unetpipe.io import atomic_path, make_splits, write_array, writes_output


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ~``scale`` pixels."""
    step = max(scale / 4.0, 1.0)
    coarse = (int(np.ceil(shape[0] / step)) + 3, int(np.ceil(shape[1] / step)) + 3)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), 1.0, mode="wrap")
    field = ndimage.zoom(field, step, order=1)[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-12)


def _seeds(rng: np.random.Generator, shape: tuple[int, int], cell_size: float) -> np.ndarray:
    """Cell centres: a Poisson process of spatially varying density, thinned to a minimum spacing.

    The density varies over a few cell sizes, so that clusters of small cells (thin axons) sit
    next to large ones, as in ISBI 2012.
    """
    density = np.exp(0.7 * _smooth_field(rng, shape, 3 * cell_size))
    mean_area = np.pi * cell_size**2 / 4
    n = rng.poisson(shape[0] * shape[1] / mean_area * density.max() / density.mean())
    points = rng.uniform((0, 0), shape, size=(n, 2))
    keep = rng.uniform(0, density.max(), n) < density[tuple(points.astype(int).T)]
    points = points[keep]
    close = cKDTree(points).query_pairs(0.3 * cell_size, output_type="ndarray")
    drop = np.zeros(len(points), bool)
    for i, j in close:
        if not drop[i]:
            drop[j] = True
    return points[~drop]


def _tessellate(
    seeds: np.ndarray, shape: tuple[int, int], warp: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-seed index at warped pixel positions (a Voronoi diagram with curved walls), and
    each pixel's distance to the nearest wall between two cells."""
    grid = np.ones(shape, bool)
    idx = np.clip(np.round(seeds).astype(int), 0, np.array(shape) - 1)
    grid[tuple(idx.T)] = False
    owner = np.full(shape, -1, np.int64)
    owner[tuple(idx.T)] = np.arange(len(seeds))
    nearest = ndimage.distance_transform_edt(grid, return_distances=False, return_indices=True)
    cells = owner[tuple(nearest)]
    yy, xx = np.indices(shape, dtype=np.float32)
    coords = np.stack([yy + warp[0], xx + warp[1]])
    cells = ndimage.map_coordinates(cells, coords, order=0, mode="nearest")
    wall = np.zeros(shape, bool)
    wall[:-1] |= cells[:-1] != cells[1:]
    wall[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    return cells, ndimage.distance_transform_edt(~wall)


def _organelles(
    rng: np.random.Generator, cells: np.ndarray, wall_dist: np.ndarray, cell_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Darkening (0..1) by vesicles (rings), mitochondria (striated ellipses) and dark clumps,
    kept inside their cell; and the mask of the dark clumps (they look like membrane)."""
    shape = cells.shape
    dark = np.zeros(shape, np.float32)
    n_cells = int(cells.max()) + 1
    # Vesicles: clustered in a third of the cells, rings of radius 2-4 px (one distance transform).
    rich = rng.uniform(size=n_cells) < 0.5
    n_ves = rng.poisson(shape[0] * shape[1] / 100)
    centres = rng.uniform((0, 0), shape, size=(n_ves, 2)).astype(int)
    radii = rng.uniform(1.8, 3.8, n_ves)
    inside = rich[cells[tuple(centres.T)]] & (wall_dist[tuple(centres.T)] > radii + 2)
    centres, radii = centres[inside], radii[inside]
    if len(centres):
        grid = np.ones(shape, bool)
        grid[tuple(centres.T)] = False
        owner = np.zeros(shape, np.int64)
        owner[tuple(centres.T)] = np.arange(len(centres))
        dist, nearest = ndimage.distance_transform_edt(grid, return_indices=True)
        ring = np.exp(-((dist - radii[owner[tuple(nearest)]]) ** 2) / (2 * 0.6**2))
        dark += 0.45 * ring.astype(np.float32)
    # Mitochondria and dark clumps: ellipses, clipped to the cell holding their centre.
    clumps = np.zeros(shape, bool)
    n_big = rng.poisson(shape[0] * shape[1] / (4 * cell_size**2))
    for _ in range(n_big):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        if wall_dist[int(cy), int(cx)] < 6:
            continue
        mito = rng.uniform() < 0.6
        ry = rng.uniform(0.12, 0.3) * cell_size if mito else rng.uniform(3, 7)
        rx = ry * (rng.uniform(1.5, 2.5) if mito else rng.uniform(1, 1.6))
        rr, cc = ellipse(cy, cx, ry, rx, shape=shape, rotation=rng.uniform(0, np.pi))
        own = cells[rr, cc] == cells[int(cy), int(cx)]
        rr, cc = rr[own], cc[own]
        if mito:
            stripes = 0.5 + 0.5 * np.sin(rr * np.cos(cx) * 1.6 + cc * np.sin(cx) * 1.6)
            dark[rr, cc] += 0.25 + 0.2 * stripes
        else:
            dark[rr, cc] += rng.uniform(0.45, 0.65)
            clumps[rr, cc] = True
    return np.clip(dark, 0, 0.8), clumps


def _slice(
    rng: np.random.Generator,
    cells: np.ndarray,
    wall_dist: np.ndarray,
    tone: np.ndarray,
    membrane_width: float,
    cell_size: float,
    noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Grey values in 0..1 and the membrane mask of one slice.

    Cell interiors are the tessellation less a membrane band, opened with a disk so that corners
    round off and the extracellular space where three cells meet is membrane-dark, as in EM.
    """
    shape = cells.shape
    width = membrane_width * np.exp(0.3 * _smooth_field(rng, shape, cell_size))
    core = ndimage.distance_transform_edt(wall_dist >= width / 2) > 0.05 * cell_size
    interior = ndimage.distance_transform_edt(~core) <= 0.05 * cell_size
    depth = ndimage.distance_transform_edt(interior)
    contrast = np.clip(0.6 + 0.2 * _smooth_field(rng, shape, 1.5 * cell_size), 0.3, 0.85)
    grain = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    mottle = ndimage.gaussian_filter(rng.standard_normal(shape), 4.0)
    image = tone[cells] + 0.07 * grain / grain.std() + 0.04 * mottle / mottle.std()
    dark, _ = _organelles(rng, cells, wall_dist, cell_size)
    image = image * (1 - dark) * (1 - contrast * np.exp(-((depth / 1.2) ** 2)))
    image = image * (1 + 0.08 * _smooth_field(rng, shape, 8 * cell_size))
    image = ndimage.gaussian_filter(image, 0.9) + noise * rng.standard_normal(shape)
    return np.clip(image, 0, 1), ~interior


def _split_slice_fragments(labels: np.ndarray) -> np.ndarray:
    """uint32 labels in which every instance is also connected within each slice: a cell's
    smaller pieces in a slice (joined only through other slices) get ids of their own."""
    out = labels.astype(np.uint32)
    next_id = int(out.max()) + 1
    for z in range(out.shape[0]):
        pieces = connected_components(out[z], background=0, connectivity=1)
        n = int(pieces.max())
        owner = np.zeros(n + 1, np.int64)
        owner[pieces.ravel()] = out[z].ravel()
        size = np.bincount(pieces.ravel(), minlength=n + 1)
        order = np.lexsort((-size[1:], owner[1:])) + 1
        extra = order[1:][owner[order[1:]] == owner[order[:-1]]]
        if len(extra):
            new_ids = owner.copy()
            new_ids[extra] = np.arange(next_id, next_id + len(extra))
            next_id += len(extra)
            out[z] = new_ids[pieces]
    return out


def synthetic_stack(
    shape: Sequence[int],
    cell_size: float = 40.0,
    membrane_width: float = 3.0,
    noise: float = 0.08,
    seed: int = 0,
    drift: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like (z, y, x) uint8 stack and its uint32 instance labels (0 = membrane).

    ``drift`` is how far, in cell sizes, cell centres move from one slice to the next; instances
    are the 3D-connected parts of each cell, so ids carry over between overlapping sections.
    A (y, x) shape gives a single 2D image and labels.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (y, x) or (z, y, x) with positive sizes, got {shape}")
    if cell_size <= 2 * membrane_width or membrane_width <= 0:
        raise ValueError(
            f"cell_size ({cell_size}) must exceed twice membrane_width ({membrane_width}) > 0"
        )
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    n_z, plane = (1, shape) if len(shape) == 2 else (shape[0], shape[1:])
    rng = np.random.default_rng(seed)
    margin = int(cell_size)
    padded = (plane[0] + 2 * margin, plane[1] + 2 * margin)
    seeds = _seeds(rng, padded, cell_size)
    velocity = rng.normal(0, drift * cell_size, seeds.shape)
    tone = np.clip(rng.normal(0.62, 0.05, len(seeds)), 0.45, 0.8)
    tone[rng.uniform(size=len(seeds)) < 0.08] *= 0.75
    big = [_smooth_field(rng, padded, cell_size) for _ in range(4)]
    small = [_smooth_field(rng, padded, cell_size / 5) for _ in range(2)]
    raw = np.empty((n_z, *plane), np.uint8)
    cells = np.empty((n_z, *plane), np.int64)
    inner = (slice(margin, margin + plane[0]), slice(margin, margin + plane[1]))
    for z in range(n_z):
        phase = z * drift
        warp = np.stack(
            [
                0.2 * cell_size * (np.cos(phase) * big[2 * k] + np.sin(phase) * big[2 * k + 1])
                + 1.0 * small[k]
                for k in range(2)
            ]
        )
        owner, wall_dist = _tessellate(seeds + z * velocity, padded, warp)
        image, membrane = _slice(rng, owner, wall_dist, tone, membrane_width, cell_size, noise)
        raw[z] = np.round(255 * image[inner]).astype(np.uint8)
        cells[z] = np.where(membrane[inner], -1, owner[inner])
    labels = _split_slice_fragments(connected_components(cells, background=-1, connectivity=1))
    if len(shape) == 2:
        return raw[0], labels[0]
    return raw, labels


@writes_output("path")
def write_synthetic(
    path: str | Path,
    n_slices: int,
    shape: Sequence[int],
    test_slices: int,
    test_shape: Sequence[int],
    cell_size: float = 40.0,
    membrane_width: float = 3.0,
    noise: float = 0.08,
    seed: int = 0,
    val_slices: Sequence[int] = (),
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    dataset: str = "synthetic",
    overwrite: bool = True,
) -> Path:
    """Write the synthetic dataset as the Zarr group of the data contract, atomically.

    ``raw``/``labels``: ``n_slices`` labelled slices of ``shape``; ``test``/``test_labels``: a
    separate, larger volume (``test_slices`` of ``test_shape``; omitted when 0) drawn from seed + 1.
    """
    params = {
        "generator": "unetpipe.synthetic",
        "cell_size": float(cell_size),
        "membrane_width": float(membrane_width),
        "noise": float(noise),
        "seed": int(seed),
    }
    raw, labels = synthetic_stack((n_slices, *shape), cell_size, membrane_width, noise, seed)
    splits = make_splits(n_slices, val_slices)
    path = Path(path)
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w")
        attrs: dict[str, Any] = {
            "dataset": dataset,
            "source": params,
            "voxel_size": [float(v) for v in voxel_size],
            "splits": splits,
        }
        group.attrs.update(attrs)
        write_array(group, "raw", raw, params)
        write_array(group, "labels", labels, params)
        if test_slices > 0:
            test, test_labels = synthetic_stack(
                (test_slices, *test_shape), cell_size, membrane_width, noise, seed + 1
            )
            test_params = {**params, "seed": int(seed) + 1}
            write_array(group, "test", test, test_params)
            write_array(group, "test_labels", test_labels, test_params)
    return path
