"""Overlap-tile inference of an image in memory (Ronneberger et al. 2015, Fig. 2): the tiles of an
output region, test-time augmentation over the 8 symmetries of the (y, x) plane, the network's
forward pass, and the tile and memory format measured per device. Geometry and mirroring:
:mod:`unetpipe.tiling`. Because tiles start on the pooling grid, they equal one pass of the network
over the whole mirror-padded image.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unetpipe.affinities import affinities_of_view, dihedral_channels
from unetpipe.measured import cached_choice
from unetpipe.model import UNet, probabilities
from unetpipe.precision import (
    autocast,
    best_seconds,
    choose_memory_format,
    fastest_memory_format,
    model_in_format,
    resolve_precision,
    torch_memory_format,
)
from unetpipe.tiling import AxisPlan, Geometry, max_tile_for_budget, plan_axis, read_mirrored

DEFAULT_MEMORY_GB = 4.0


def predict_image(
    model: UNet,
    image: np.ndarray,
    tile: int | Sequence[int] | None = None,
    batch_size: int = 1,
    *,
    mirror: str = "reflect",
    tta: bool = False,
    memory_gb: float = DEFAULT_MEMORY_GB,
    precision: str = "float32",
    memory_format: str = "auto",
) -> np.ndarray:
    """Class probabilities (softmax; an affinity net: a sigmoid per offset), shaped
    ``(classes, *image.shape)``, float32.

    ``image`` is a normalised 2D image (3D volume for a 3D net). ``tile`` is the largest input
    tile per axis (a valid extent); ``None`` takes the largest that fits ``memory_gb``. Tiles are
    then fitted to the image. ``mirror`` is numpy's pad mode for context past the border;
    ``tta`` averages over the 8 flips/rotations of the (y, x) plane. ``precision`` (float32,
    bfloat16, float16 on CUDA, or auto: :func:`unetpipe.precision.resolve_precision`) is that
    of the network's autocast; the soft-max is float32. ``memory_format``: contiguous,
    channels_last, or auto = the faster one measured for the image's largest tile
    (:func:`pass_memory_format`).
    """
    if model.training:
        raise ValueError("predict_image needs the model in eval mode (call model.eval())")
    check_tta(model, tta)
    geometry = Geometry.of(model)
    image = np.asarray(image, dtype=np.float32)
    _check_image(image, geometry.dims, "image")
    max_tile = largest_tile(model, tile, batch_size, memory_gb, image.shape)
    precision = resolve_precision(precision, next(model.parameters()).device)
    views = Views.of(model.config, tta, image.shape)
    region = plan_region(geometry, (0,) * geometry.dims, image.shape, max_tile, views)
    data = read_mirrored(image, region.start, region.stop, mirror)
    largest = tuple(p.tile for p in region.plans)
    fmt, _ = choose_memory_format(
        memory_format, None, lambda: pass_memory_format(model, largest, batch_size, precision)
    )
    run = Pass(batch_size, precision, fmt)
    with model_in_format(model, run.memory_format):
        return predict_region(model, data, region, run)


def check_tta(model: UNet, tta: bool) -> None:
    """Refuse TTA for a net whose channels or axes the (y, x) symmetries do not map onto
    themselves: an affinity net whose offsets lack their mirror images (up to sign), or one that
    treats y and x differently."""
    if tta and "offsets" in model.config:
        for flips, swap in _DIHEDRAL:  # ValueError unless every view's channels map back
            dihedral_channels(model.config["offsets"], flips, swap)
    axes = Geometry.of(model).axes
    if tta and axes[-1] != axes[-2]:
        raise ValueError(
            "tta rotates the (y, x) plane, but this network pools or convolves y and x "
            "differently (model.pool, model.kernel): predict it with tta off"
        )


def _check_image(image: np.ndarray, dims: int, name: str) -> None:
    if image.ndim != dims:
        raise ValueError(
            f"{name} must have {dims} axes for a {dims}D U-Net, got shape {image.shape}"
        )
    if image.size == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or inf; fill or mask them before prediction")


def largest_tile(
    model: UNet,
    tile: int | Sequence[int] | None,
    batch_size: int,
    memory_gb: float,
    extent: Sequence[int],
) -> tuple[int, ...]:
    """The largest input tile per axis: ``tile`` checked (an int: the same on every axis), or
    with ``tile`` None the largest whose forward pass of ``batch_size`` tiles fits ``memory_gb``
    while ``extent`` (output px per axis) still needs it
    (:func:`unetpipe.tiling.max_tile_for_budget`)."""
    geometry = Geometry.of(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer (tiles per pass), got {batch_size!r}"
        )
    if not isinstance(memory_gb, int | float) or not 0 < memory_gb < math.inf:
        raise ValueError(
            f"memory_gb must be a positive number of GiB (the budget of one forward pass), "
            f"got {memory_gb!r}"
        )
    if tile is None:
        return max_tile_for_budget(model.config, geometry, memory_gb * 2**30, batch_size, extent)
    tiles = (tile,) * geometry.dims if isinstance(tile, int) else tuple(tile)
    if len(tiles) != geometry.dims:
        raise ValueError(f"tile needs {geometry.dims} extents, got {tiles}")
    geometry.tile_output(tiles)  # ValueError naming the nearest valid tiles
    return tiles


@dataclass(frozen=True)
class Pass:
    """How the network runs: tiles per forward pass, resolved precision, memory format name."""

    batch_size: int
    precision: str
    memory_format: str


# Largest output per axis of the tile the memory format is measured on (2D: the paper's 388 px,
# 3D: Cicek et al.'s 44 voxels): a larger tile would cost more than the choice saves.
MEASURE_OUTPUT = {2: 388, 3: 44}


def pass_memory_format(model: UNet, tile: Sequence[int], batch_size: int, precision: str) -> str:
    """The memory format (``contiguous`` or ``channels_last``) in which a forward pass of
    ``batch_size`` tiles of ``tile`` (at most the valid tile of :data:`MEASURE_OUTPUT`) in
    ``precision`` is faster on the model's device, measured once per machine
    (:func:`unetpipe.precision.fastest_memory_format`)."""
    device = next(model.parameters()).device
    geometry = Geometry.of(model)
    cap = geometry.smallest_tile((MEASURE_OUTPUT[geometry.dims],) * geometry.dims)
    tile = tuple(min(t, c) for t, c in zip(tile, cap, strict=True))
    x = torch.zeros(batch_size, model.config["in_channels"], *tile, device=device)

    def run(name: str) -> None:
        with model_in_format(model, name):
            _network(
                model, x.contiguous(memory_format=torch_memory_format(name, x.dim())), precision
            )

    key = (str(device), precision, json.dumps(model.config, sort_keys=True), tuple(tile))
    return fastest_memory_format((*key, batch_size, "forward"), run, device)


# Output extents of the tiles measured when the tile is chosen by measurement (predict_zarr, tile
# None): from the paper's 388 px (Cicek et al.'s 44 voxels in 3D) up, about 1.4x apart.
TILE_LADDER = {2: (388, 548, 776, 1096, 1552, 2192, 3104, 4384), 3: (44, 64, 88, 124, 176, 248)}
WORSE = 1.15  # stop measuring larger tiles once one costs this much more than the best


def pass_tile(
    model: UNet,
    size: Sequence[int],
    cap: Sequence[int],
    batch_size: int,
    precision: str,
    memory_format: str,
) -> tuple[int, ...]:
    """The tile (per axis) that predicts a region of ``size`` output pixels per axis fastest on
    the model's device: for each tile of :data:`TILE_LADDER` (valid, at most ``cap``, as fitted to
    the region by :func:`unetpipe.tiling.plan_axis`), smallest first, one forward pass of
    ``batch_size`` tiles is timed (:func:`unetpipe.precision.best_seconds`, one repeat) and the
    region costs passes x seconds; the cheapest wins. Larger tiles are not tried once one costs
    :data:`WORSE` x the best. Throughput per pixel is not monotonic in the tile (caches; on a CPU
    with AMX bfloat16 runs ~2x faster per pixel at 1108 than at 2236 px), hence measured, once per
    machine (:func:`unetpipe.measured.cached_choice`: in bfloat16 the tile changes the rounding)."""
    geometry = Geometry.of(model)
    device = next(model.parameters()).device
    axes = geometry.axes
    covering = tuple(plan_axis(n, c, a).tile for n, c, a in zip(size, cap, axes, strict=True))
    candidates = []
    for output in TILE_LADDER[geometry.dims]:
        tile = geometry.smallest_tile((output,) * geometry.dims)
        plans = [
            plan_axis(n, min(t, c), a) for n, t, c, a in zip(size, tile, cap, axes, strict=True)
        ]
        if candidates and tuple(p.tile for p in plans) == candidates[-1][0]:
            continue
        tiles = math.prod(len(p.starts) for p in plans)
        candidates.append((tuple(p.tile for p in plans), math.ceil(tiles / batch_size)))
        if tuple(p.tile for p in plans) == covering:
            break
    if len(candidates) == 1:
        return candidates[0][0]

    def measure() -> tuple[int, ...]:
        best, best_cost = candidates[0][0], math.inf
        for tile, passes in candidates:
            x = torch.zeros(batch_size, model.config["in_channels"], *tile, device=device)
            x = x.contiguous(memory_format=torch_memory_format(memory_format, x.dim()))
            with model_in_format(model, memory_format):
                seconds = best_seconds(lambda x=x: _network(model, x, precision), device, repeats=1)
            cost = passes * seconds
            if cost < best_cost:
                best, best_cost = tile, cost
            elif cost > WORSE * best_cost:
                break
        return best

    key = (str(device), precision, memory_format, json.dumps(model.config, sort_keys=True))
    key += (tuple(size), tuple(cap), batch_size)
    return tuple(cached_choice("tile", key, device, measure))


# The 8 symmetries of the square: optional transpose of (y, x) after optional flips.
_DIHEDRAL = [
    (flips, swap) for swap in (False, True) for flips in itertools.product((0, 1), repeat=2)
]


def _transform(array: np.ndarray, flips: Sequence[int], swap: bool) -> np.ndarray:
    axes = [array.ndim - 2 + i for i, flip in enumerate(flips) if flip]
    array = np.flip(array, axes) if axes else array
    return np.swapaxes(array, -1, -2) if swap else array


def _untransform(array: np.ndarray, flips: Sequence[int], swap: bool) -> np.ndarray:
    array = np.swapaxes(array, -1, -2) if swap else array
    axes = [array.ndim - 2 + i for i, flip in enumerate(flips) if flip]
    return np.flip(array, axes) if axes else array


@dataclass(frozen=True)
class Views:
    """Test-time augmentation of a prediction: on or off, the reach of an affinity net's offsets
    per axis, and the extent of the whole image or volume (its end fixes the pooling grid of the
    flipped views)."""

    tta: bool
    reach: tuple[int, ...]
    extent: tuple[int, ...]

    @classmethod
    def of(cls, config: dict[str, Any], tta: bool, extent: Sequence[int]) -> Views:
        """The views of a net (its config) over an image of ``extent``: with TTA, an affinity
        net's views reach as far as its offsets, for a channel that a view reverses is read one
        offset away (:func:`unetpipe.affinities.affinities_of_view`)."""
        reach: tuple[int, ...] = ()
        if tta and "offsets" in config:
            offsets = config["offsets"]
            reach = tuple(max(abs(int(o[a])) for o in offsets) for a in range(config["dims"]))
        return cls(tta, reach, tuple(int(n) for n in extent))


@dataclass(frozen=True)
class Region:
    """Output pixels ``[origin, origin + size)``, the tiles covering them per axis (and with TTA
    those of the views transposed in (y, x)), and the input box ``[start, stop)`` they read. With
    TTA the tiles cover more: ``margin`` px before the region (and as many after it, plus what
    puts its end where the image's end lies on the pooling grid, :func:`plan_region`)."""

    origin: tuple[int, ...]
    size: tuple[int, ...]
    plans: tuple[AxisPlan, ...]
    swapped: tuple[AxisPlan, ...]  # empty without TTA
    start: tuple[int, ...]
    stop: tuple[int, ...]
    margin: tuple[int, ...] = ()


def plan_region(
    geometry: Geometry,
    origin: Sequence[int],
    size: Sequence[int],
    max_tile: Sequence[int],
    views: Views,
) -> Region:
    """Tiles of an output region; ``origin`` must lie on the pooling grid.

    With TTA the tiles cover the region grown by the reach of an affinity net's offsets (rounded
    up to the pooling grid) on each side, and at its end by what puts the end where the image's
    end lies on the pooling grid: a flipped view sees the grid of the whole flipped image, so
    blocks give the whole image's TTA exactly."""
    halo, axes = geometry.halo, geometry.axes
    if not views.tta:
        plans = tuple(plan_axis(s, t, a) for s, t, a in zip(size, max_tile, axes, strict=True))
        start = tuple(o - h for o, h in zip(origin, halo, strict=True))
        stop = tuple(a + p.read_length for a, p in zip(start, plans, strict=True))
        return Region(tuple(origin), tuple(size), plans, (), start, stop)
    reach = views.reach or (0,) * len(size)
    margin = tuple(math.ceil(r / a) * a for r, a in zip(reach, geometry.align, strict=True))
    grown = tuple(
        s + 2 * m + (n - o - s) % a
        for o, s, m, n, a in zip(origin, size, margin, views.extent, geometry.align, strict=True)
    )
    plans = tuple(plan_axis(s, t, a) for s, t, a in zip(grown, max_tile, axes, strict=True))
    # Transposed views swap the last two axes (with their tile limits); TTA needs the same
    # geometry on both (checked by check_tta).
    swapped = plans[:-2] + (
        plan_axis(grown[-1], max_tile[-1], axes[-1]),
        plan_axis(grown[-2], max_tile[-2], axes[-2]),
    )
    extra = max(
        p.read_length - p.size - 2 * h for p, h in zip(plans + swapped, halo + halo, strict=True)
    )
    start = tuple(o - m - h - extra for o, m, h in zip(origin, margin, halo, strict=True))
    stop = tuple(a + g + 2 * (h + extra) for a, g, h in zip(start, grown, halo, strict=True))
    return Region(tuple(origin), tuple(size), plans, swapped, start, stop, margin)


def predict_region(model: UNet, data: np.ndarray, region: Region, run: Pass) -> np.ndarray:
    """Probabilities of the output pixels of ``region`` from ``data``, its normalised, mirrored
    input box ``[region.start, region.stop)``."""
    if not region.swapped:
        return _run_tiles(model, data, region.plans, run)
    extra = region.origin[0] - region.margin[0] - region.start[0] - Geometry.of(model).halo[0]
    offsets = model.config.get("offsets")
    crop = tuple(slice(m, m + n) for m, n in zip(region.margin, region.size, strict=True))
    total = np.zeros((model.config["n_classes"], *region.size), dtype=np.float32)
    for flips, swap in _DIHEDRAL:
        view = _transform(data, flips, swap)
        axis_plans = region.swapped if swap else region.plans
        view = view[tuple(slice(extra, extra + p.read_length) for p in axis_plans)]
        probs = _untransform(_run_tiles(model, view, axis_plans, run), flips, swap)
        if offsets is not None:  # channels to the image's offsets, the margin cropped
            total += affinities_of_view(probs, offsets, flips, swap, region.margin, region.size)
        else:
            total += probs[(slice(None), *crop)]
    return total / len(_DIHEDRAL)


def _run_tiles(model: UNet, padded: np.ndarray, plans: Sequence[AxisPlan], run: Pass) -> np.ndarray:
    """Run every tile of ``plans`` over ``padded`` in batches; assemble the output region."""
    out = np.empty((model.config["n_classes"], *(p.size for p in plans)), dtype=np.float32)
    origins = list(itertools.product(*(p.starts for p in plans)))
    for first in range(0, len(origins), run.batch_size):
        batch = origins[first : first + run.batch_size]
        tiles = np.stack(
            [
                padded[tuple(slice(o, o + p.tile) for o, p in zip(corner, plans, strict=True))]
                for corner in batch
            ]
        )
        for corner, probs in zip(batch, _forward(model, tiles, run), strict=True):
            keep = tuple(
                slice(0, min(p.output, p.size - o)) for o, p in zip(corner, plans, strict=True)
            )
            place = tuple(slice(o, o + k.stop) for o, k in zip(corner, keep, strict=True))
            out[(slice(None), *place)] = probs[(slice(None), *keep)]
    return out


def _network(model: UNet, x: torch.Tensor, precision: str) -> torch.Tensor:
    """The logits of the network, computed in ``precision`` (autocast), as float32."""
    with torch.inference_mode(), autocast(x.device, precision):
        return model(x).float()


def _forward(model: UNet, tiles: np.ndarray, run: Pass) -> np.ndarray:
    """Softmax (an affinity net: sigmoids; float32) of the network over a batch of tiles
    ``(batch, *tile)``; same-padded networks are cropped by the halo so that they keep only
    pixels with full context."""
    geometry = Geometry.of(model)
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32)).unsqueeze(1).to(device)
    logits = _network(
        model,
        x.contiguous(memory_format=torch_memory_format(run.memory_format, x.dim())),
        run.precision,
    )
    if geometry.padding == "same":
        crop = [slice(h, -h) if h else slice(None) for h in geometry.halo]
        logits = logits[(slice(None), slice(None), *crop)]
    with torch.inference_mode():
        return probabilities(logits, model.config).cpu().numpy()
