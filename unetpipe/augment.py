"""Data augmentation of Section 3.1 and the precomputed bank of augmented tiles.

"Especially random elastic deformations of the training samples seem to be the key concept to train
a segmentation network with very few annotated images": random displacement vectors on a coarse
3 x 3 grid, drawn from a Gaussian with 10 pixels standard deviation, per-pixel displacements by
bicubic interpolation; together with shift, rotation, flips and gray-value variation.

One sampling field per sample maps the input tile into the source image; it warps the image (cubic
or linear), the labels (nearest, so no new label values appear) and the weight map (linear), the
labels and weights only on the central output crop. Sample points past the image border read
mirrored context (numpy's ``reflect``: the edge pixel is not repeated), as in Fig. 2.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from unetpipe.config import defaults
from unetpipe.intensity import dataset_statistics, normalize
from unetpipe.io import atomic_path, create_array, open_data, read_splits, writes_output
from unetpipe.model import network_output_size
from unetpipe.sections import AugmentConfig, GrayConfig, ModelConfig
from unetpipe.weights import training_labels

log = logging.getLogger(__name__)

Size = int | tuple[int, int]

DEFAULT_PARAMS: dict[str, Any] = defaults("augment")
"""The ``augment`` config section's defaults (from the schema, unetpipe/config.schema.yaml)."""

_TAPS = {"nearest": 1, "linear": 2, "cubic": 4}
_BLOCK_ROWS = 32  # rows interpolated at a time (temporaries of 32 x 572 stay in cache)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: a pure function of (seed, index), whatever the worker."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed}, {index}")
    return np.random.default_rng([seed, index])


def sizes(size: int | Sequence[int], dims: int, name: str) -> tuple[int, ...]:
    """An extent per axis of a ``dims``-D tile (one int: the same for every axis), checked."""
    per_axis = (size,) * dims if isinstance(size, int | np.integer) else tuple(size)
    if len(per_axis) != dims or min(per_axis) < 1:
        axes = "(y, x) pair" if dims == 2 else "(z, y, x) triple"
        raise ValueError(f"{name} must be a positive int or a {axes}, got {size!r}")
    return tuple(int(n) for n in per_axis)


def checked_sample(
    image: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    input_size: int | Sequence[int],
    output_size: int | Sequence[int],
    dims: int,
) -> tuple[tuple[int, ...], tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """The tile and output extents and the arrays of one ``dims``-D sample, checked: the output
    centred in the tile, image (float32), labels and weights (float32) of one shape."""
    image = np.asarray(image, dtype=np.float32)
    labels, weights = np.asarray(labels), np.asarray(weights, dtype=np.float32)
    tile, out = checked_sizes(image, labels, weights, input_size, output_size, dims)
    return tile, out, image, labels, weights


def checked_sizes(
    image: Any,
    labels: Any,
    weights: Any,
    input_size: int | Sequence[int],
    output_size: int | Sequence[int],
    dims: int,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tile and output extents of one ``dims``-D sample, checked against the shapes of its
    arrays (any with a ``shape``: nothing is read): the output centred in the tile, image,
    labels and weights of one shape."""
    tile, out = sizes(input_size, dims, "input_size"), sizes(output_size, dims, "output_size")
    if any(o > t or (t - o) % 2 for t, o in zip(tile, out, strict=True)):
        raise ValueError(f"output_size {out} must fit centred in input_size {tile}")
    shape = tuple(image.shape)
    if len(shape) != dims or tuple(labels.shape) != shape or tuple(weights.shape) != shape:
        raise ValueError(
            f"need {dims}D image, labels and weights of one shape, got {shape}, "
            f"{tuple(labels.shape)}, {tuple(weights.shape)}"
        )
    return tile, out


def _keys(t: np.ndarray, a: float = -0.5) -> list[np.ndarray]:
    """Weights of the 4 neighbours ``floor - 1 .. floor + 2`` in Keys' cubic convolution."""
    t2, t3 = t * t, t * t * t
    return [
        a * (t3 - 2 * t2 + t),
        (a + 2) * t3 - (a + 3) * t2 + 1,
        -(a + 2) * t3 + (2 * a + 3) * t2 - a * t,
        -a * (t3 - t2),
    ]


def upsampling_matrix(n: int, points: int) -> np.ndarray:
    """(n, points) bicubic interpolation from control points at ``linspace(0, n - 1, points)``."""
    position = np.arange(n) * (points - 1) / max(n - 1, 1)
    base = np.minimum(np.floor(position).astype(int), points - 1)
    matrix = np.zeros((n, points))
    for tap, weight in enumerate(_keys(position - base), start=-1):
        np.add.at(matrix, (np.arange(n), np.clip(base + tap, 0, points - 1)), weight)
    return matrix


Separable = tuple[np.ndarray, np.ndarray]
"""A coordinate map ``c[i, j] = sum_k rows[i, k] * cols[j, k]`` as its factors (rows, cols)."""


def _evaluate(field: Separable, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the map (a sum of outer products: no BLAS threads for rank 5)."""
    rows, cols = field[0][start:stop], field[1]
    out = rows[:, 0, None] * cols[:, 0]
    for k in range(1, rows.shape[1]):
        out += rows[:, k, None] * cols[:, k]
    return out


def _bounds(field: Separable) -> tuple[float, float]:
    """Bounds of a separable map from the ranges of its factors (never narrower than the map)."""
    low = high = 0.0
    for row, col in zip(field[0].T, field[1].T, strict=True):
        ends = np.outer([row.min(), row.max()], [col.min(), col.max()])
        low, high = low + ends.min(), high + ends.max()
    return low, high


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Indices folded into ``0..n-1`` by mirroring at the edge pixels (numpy's ``reflect``)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def _interpolate(image: np.ndarray, y: Separable, x: Separable, order: str) -> np.ndarray:
    """``image`` at the points (y, x) with nearest, linear or cubic interpolation, mirrored context.

    Reads a mirrored crop covering the points, then, a block of rows at a time (so that the
    temporaries stay in cache), evaluates the coordinates and sums the kernel taps gathered from the
    crop. Exact at integer coordinates.
    """
    taps = _TAPS[order]
    first = -((taps - 1) // 2)
    half = 0.5 if order == "nearest" else 0.0
    (y_low, y_high), (x_low, x_high) = _bounds(y), _bounds(x)
    r0, c0 = math.floor(y_low + half) + first, math.floor(x_low + half) + first
    r1, c1 = math.floor(y_high + half) + first + taps, math.floor(x_high + half) + first + taps
    if r0 >= 0 and c0 >= 0 and r1 <= image.shape[0] and c1 <= image.shape[1]:
        r0 = c0 = 0  # inside the image: gather from it directly
        crop = np.ascontiguousarray(image)
    else:
        crop = image.take(_mirror(np.arange(r0, r1), image.shape[0]), axis=0)
        crop = crop.take(_mirror(np.arange(c0, c1), image.shape[1]), axis=1)
    width, flat = crop.shape[1], crop.ravel()
    shape = (y[0].shape[0], y[1].shape[0])
    out = np.empty(shape, image.dtype if order == "nearest" else np.float32)
    for start in range(0, shape[0], _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, shape[0])
        yb, xb = _evaluate(y, start, stop) + half, _evaluate(x, start, stop) + half
        y0, x0 = np.floor(yb), np.floor(xb)
        base = (y0.astype(np.intp) + (first - r0)) * width + (x0.astype(np.intp) + (first - c0))
        if order == "nearest":
            out[start:stop] = flat.take(base)
            continue
        ty, tx = (yb - y0).astype(np.float32), (xb - x0).astype(np.float32)
        wy, wx = (_keys(ty), _keys(tx)) if order == "cubic" else ([1 - ty, ty], [1 - tx, tx])
        acc = out[start:stop]
        acc[...] = 0
        for i in range(taps):
            row = wx[0] * flat.take(base + i * width)
            for j in range(1, taps):
                row += wx[j] * flat.take(base + (i * width + j))
            row *= wy[i]
            acc += row
    return out


def _sampling_map(
    tile: tuple[int, int],
    origin: tuple[int, int],
    params: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[Separable, Separable]:
    """Source coordinates (y, x) of every input-tile pixel, as separable maps.

    The tile's grid is flipped and rotated about its centre, shifted, then displaced by the elastic
    field: N(0, sigma^2) vectors on a ``grid`` x ``grid`` lattice spanning the tile (corners
    included), interpolated bicubically to every pixel (Section 3.1). Every part is separable
    (the affine part has rank 2, the bicubic upsampling ``R_y C R_x^T`` rank ``grid``).
    """
    matrix = np.eye(2)
    if params.flip.enabled:
        matrix = matrix * rng.choice([-1.0, 1.0], size=2)
    if params.rotation.enabled:
        angle = math.radians(rng.uniform(-1, 1) * params.rotation.max_degrees)
        cos, sin = math.cos(angle), math.sin(angle)
        matrix = np.array([[cos, -sin], [sin, cos]]) @ matrix
    shift = np.zeros(2)
    if params.shift.enabled:
        shift = rng.uniform(-1, 1, size=2) * params.shift.max_px
    centre = [(t - 1) / 2 for t in tile]
    py, px = (np.arange(t) - c for t, c in zip(tile, centre, strict=True))
    ones_y, ones_x = np.ones(tile[0]), np.ones(tile[1])
    fields = []
    for axis in range(2):
        offset = origin[axis] + centre[axis] + shift[axis]
        rows = [offset + matrix[axis, 0] * py, ones_y]
        cols = [ones_x, matrix[axis, 1] * px]
        fields.append((rows, cols))
    if params.elastic.enabled:
        grid, sigma = params.elastic.grid, params.elastic.sigma
        coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
        up_y, up_x = upsampling_matrix(tile[0], grid), upsampling_matrix(tile[1], grid)
        for axis in range(2):
            fields[axis][0].extend(np.einsum("ia,ab->bi", up_y, coarse[axis]))
            fields[axis][1].extend(up_x.T)
    (y_rows, y_cols), (x_rows, x_cols) = fields
    return (np.stack(y_rows, 1), np.stack(y_cols, 1)), (np.stack(x_rows, 1), np.stack(x_cols, 1))


def random_origin(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    tile: tuple[int, ...],
    out: tuple[int, ...],
) -> tuple[int, ...]:
    """Input-tile corner such that the output crop lies in the image (or covers it, if smaller)."""
    origin = []
    for n, t, o in zip(shape, tile, out, strict=True):
        start = int(rng.integers(min(0, n - o), max(0, n - o) + 1))
        origin.append(start - (t - o) // 2)
    return tuple(origin)


def gray_variation(image: np.ndarray, gray: GrayConfig, rng: np.random.Generator) -> np.ndarray:
    """Gray-value variation: a gamma curve over the tile's range, then contrast and brightness."""
    gamma = math.exp(rng.uniform(-1, 1) * math.log1p(gray.gamma))
    low, high = float(image.min()), float(image.max())
    if high > low and gamma != 1.0:
        image = low + (high - low) * ((image - low) / (high - low)) ** gamma
    contrast = rng.uniform(1 - gray.contrast, 1 + gray.contrast)
    brightness = rng.uniform(-gray.brightness, gray.brightness)
    return (contrast * image + brightness).astype(np.float32)


def augment_sample(
    image: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    input_size: Size,
    output_size: Size,
    params: AugmentConfig | Mapping[str, Any] | None,
    rng: np.random.Generator,
    origin: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented training sample (Section 3.1) from a 2D image with its labels and weight map.

    ``image`` is normalised float32 (gray-value parameters are in its units); ``params`` is the
    ``augment`` config section (:class:`~unetpipe.sections.AugmentConfig`, or a mapping whose
    missing keys take DEFAULT_PARAMS). ``origin`` is the (y, x) of the
    input tile's top-left corner in the image (may be negative: mirrored context); by default a
    random one whose output crop lies in the image. The tile's sampling grid is flipped, rotated
    about the tile centre, shifted and elastically displaced; the image is interpolated on the whole
    input tile, labels (nearest) and weights (linear) on its central ``output_size`` crop.

    All randomness comes from ``rng``: pass ``sample_rng(seed, index)`` for samples that do not
    depend on the worker. Returns ``(image_tile, label_tile, weight_tile)``: float32 of
    ``input_size``, labels' dtype and float32 of ``output_size``.
    """
    params = AugmentConfig.from_mapping(params)
    tile, out, image, labels, weights = checked_sample(
        image, labels, weights, input_size, output_size, 2
    )
    if origin is None:
        origin = random_origin(rng, image.shape, tile, out)  # type: ignore[assignment]

    y, x = _sampling_map(tile, origin, params, rng)  # type: ignore[arg-type]
    inner = [slice((t - o) // 2, (t - o) // 2 + o) for t, o in zip(tile, out, strict=True)]
    y_out = (y[0][inner[0]], y[1][inner[1]])
    x_out = (x[0][inner[0]], x[1][inner[1]])
    image_tile = _interpolate(image, y, x, params.interpolation)
    label_tile = _interpolate(labels, y_out, x_out, "nearest")
    weight_tile = _interpolate(weights, y_out, x_out, "linear")
    if params.gray.enabled:
        image_tile = gray_variation(image_tile, params.gray, rng)
    return image_tile, label_tile, weight_tile


def _shard_range(bank_size: int, shard: int, n_shards: int) -> range:
    if not 0 <= shard < n_shards or n_shards > bank_size:
        raise ValueError(
            f"need 0 <= shard < n_shards <= bank_size, got shard {shard}, n_shards {n_shards}, "
            f"bank_size {bank_size}"
        )
    return range(shard * bank_size // n_shards, (shard + 1) * bank_size // n_shards)


@writes_output("out_path", "data_zarr_path")
def write_bank(
    data_zarr_path: str | Path,
    out_path: str | Path,
    *,
    shard: int,
    n_shards: int,
    params: AugmentConfig | Mapping[str, Any] | None,
    input_size: Size,
    output_size: Size,
    overwrite: bool = True,
) -> None:
    """Write shard ``shard`` of ``n_shards`` of the bank of ``params.bank_size`` samples.

    Sample ``i`` draws a slice of the group's ``splits["train"]`` and its augmentation from
    ``sample_rng(params.seed, i)``, so the bank does not depend on the sharding. Images are
    normalised with ``dataset_statistics`` of the training slices (recorded in the attrs as
    ``normalization``). The shard is a Zarr group with arrays ``image`` (n, y, x) float32,
    ``labels`` and ``weights`` (n, y', x') and ``slice`` (n,), written to a temporary name and
    renamed when complete.
    """
    params = AugmentConfig.from_mapping(params)
    group = open_data(data_zarr_path)
    missing = [name for name in ("raw", "labels", "weights") if name not in group]
    if missing:
        raise ValueError(f"{data_zarr_path} lacks {missing}: run the data and weights rules first")
    train = read_splits(group)["train"]
    if not train:
        raise ValueError(f"{data_zarr_path} has no training slices (attrs['splits']['train'])")
    indices = _shard_range(params.bank_size, shard, n_shards)
    tile, out = sizes(input_size, 2, "input_size"), sizes(output_size, 2, "output_size")
    stats = dataset_statistics(group["raw"], train)
    rngs = {i: sample_rng(params.seed, i) for i in indices}
    source = {i: train[int(rngs[i].integers(len(train)))] for i in indices}
    attrs = {
        "normalization": stats,
        "params": params.to_mapping(),
        "input_size": list(tile),
        "output_size": list(out),
        "shard": shard,
        "n_shards": n_shards,
        "first_index": indices.start,
        "source": str(data_zarr_path),
    }
    with atomic_path(out_path) as tmp:
        bank = zarr.open_group(tmp, mode="w", attributes=attrs)
        n = len(indices)
        arrays = {
            "image": create_array(bank, "image", (n, *tile), np.float32),
            "labels": create_array(bank, "labels", (n, *out), group["labels"].dtype),
            "weights": create_array(bank, "weights", (n, *out), np.float32),
        }
        bank.create_array("slice", data=np.array([source[i] for i in indices], dtype=np.int64))
        # Slice by slice, so that each is read once.
        for z in sorted(set(source.values())):
            image = normalize(group["raw"][z], stats)
            labels, weights = training_labels(group, z), group["weights"][z]
            for i in (i for i in indices if source[i] == z):
                sample = augment_sample(
                    image,
                    labels,
                    weights,
                    input_size=tile,
                    output_size=out,
                    params=params,
                    rng=rngs[i],
                )
                for name, value in zip(("image", "labels", "weights"), sample, strict=True):
                    arrays[name][i - indices.start] = value
    log.info("wrote %s: samples %d..%d", out_path, indices.start, indices.stop - 1)


def augment_stage(
    data: str | Path,
    output: str | Path,
    shard: int,
    cfg: AugmentConfig | Mapping[str, Any] | None,
    model: ModelConfig | Mapping[str, Any] | None,
    overwrite: bool = True,
) -> None:
    """The augment stage, as rule ``augment`` and ``unetpipe augment`` run it: shard ``shard`` of
    the bank (:func:`write_bank`) of the augment section ``cfg`` (``shards`` shards, input tiles
    of ``tile`` px), its label and weight tiles the output of the network of the model section
    ``model`` (its tile geometry)."""
    params = AugmentConfig.from_mapping(cfg)
    out = network_output_size(ModelConfig.from_mapping(model).to_mapping(), params.tile)
    write_bank(
        data,
        output,
        shard=shard,
        n_shards=params.shards,
        params=params,
        input_size=params.tile,
        output_size=out,
        overwrite=overwrite,
    )


class AugmentedBank(Sequence):
    """The samples of the bank's shards, in sample order: ``bank[i] = (image, labels, weights)``.

    ``normalization``, ``input_size`` and ``output_size`` come from the shards' attributes.
    """

    def __init__(self, paths: Sequence[str | Path]):
        if not paths:
            raise ValueError("open_bank needs at least one shard")
        groups = [open_data(p) for p in paths]  # complete arrays, damaged chunks named
        groups.sort(key=lambda g: g.attrs["first_index"])
        first = groups[0].attrs
        for g in groups[1:]:
            if any(g.attrs[k] != first[k] for k in ("normalization", "input_size", "output_size")):
                raise ValueError("bank shards differ in normalization or tile sizes")
        self._arrays = [(g["image"], g["labels"], g["weights"]) for g in groups]
        self._starts = np.cumsum([0] + [a[0].shape[0] for a in self._arrays])
        self.normalization: dict[str, float] = dict(first["normalization"])
        self.input_size: tuple[int, int] = tuple(first["input_size"])
        self.output_size: tuple[int, int] = tuple(first["output_size"])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for a bank of {len(self)}")
        index %= len(self)
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        local = index - int(self._starts[shard])
        image, labels, weights = self._arrays[shard]
        return image[local], labels[local], weights[local]


def open_bank(paths: Sequence[str | Path]) -> AugmentedBank:
    """The augmented bank written by ``write_bank`` over all its shards."""
    return AugmentedBank(paths)
