"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2), in memory and over Zarr volumes.

:func:`predict_image` tiles an in-memory image; :func:`predict_zarr` runs the same tiles block by
block over a Zarr volume with Dask (threads, a local cluster, a scheduler address or SLURM), writes
chunk-aligned output and resumes after being killed. Geometry and mirroring: :mod:`unetpipe.tiling`.
Because blocks and tiles start on the pooling grid, both equal one pass of the network over the
whole mirror-padded image.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm import tqdm

from unetpipe.affinities import affinities_of_view, channel_names, dihedral_channels
from unetpipe.intensity import normalize
from unetpipe.io import (
    PROVENANCE,
    STORE_EVERY_CHUNK,
    check_disjoint,
    location,
    refuse_foreign,
    relative_to_output,
    sha256sum,
    stored_digest,
    writes_output,
)
from unetpipe.model import UNet, load_model, probabilities
from unetpipe.ngff import ImageArray, open_image, write_image
from unetpipe.precision import (
    autocast,
    best_seconds,
    choose_memory_format,
    fastest_memory_format,
    model_in_format,
    resolve_precision,
    torch_memory_format,
    torch_threads,
)
from unetpipe.tiling import (
    MIRROR_MODES,
    AxisPlan,
    Geometry,
    max_tile_for_budget,
    plan_axis,
    read_mirrored,
)

log = logging.getLogger(__name__)

DEFAULT_MEMORY_GB = 4.0
OUTPUT_DTYPES = ("float16", "uint8")
SCHEDULERS = ("threads", "local", "address", "slurm")


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
    _check_tta(model, tta)
    geometry = Geometry.of(model)
    image = np.asarray(image, dtype=np.float32)
    _check_image(image, geometry.dims, "image")
    max_tile = _max_tile(model, tile, batch_size, memory_gb, image.shape)
    precision = resolve_precision(precision, next(model.parameters()).device)
    views = _Views(tta, _tta_reach(model.config, tta), image.shape)
    region = _plan_region(geometry, (0,) * geometry.dims, image.shape, max_tile, views)
    data = read_mirrored(image, region.start, region.stop, mirror)
    largest = tuple(p.tile for p in region.plans)
    fmt, _ = choose_memory_format(
        memory_format, None, lambda: pass_memory_format(model, largest, batch_size, precision)
    )
    run = _Pass(batch_size, precision, fmt)
    with model_in_format(model, run.memory_format):
        return _predict_region(model, data, region, run)


def _check_tta(model: UNet, tta: bool) -> None:
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


def _max_tile(
    model: UNet,
    tile: int | Sequence[int] | None,
    batch_size: int,
    memory_gb: float,
    extent: Sequence[int],
) -> tuple[int, ...]:
    """The configured tile per axis (checked), or the largest that fits the memory budget while
    ``extent`` (output px per axis) still needs it."""
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
class _Pass:
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
    ``precision`` is faster on the model's device, measured once per process
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
_TILES: dict[tuple, tuple[int, ...]] = {}


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
    with AMX bfloat16 runs ~2x faster per pixel at 1108 than at 2236 px), hence measured. Cached
    per process."""
    geometry = Geometry.of(model)
    device = next(model.parameters()).device
    key = (str(device), precision, memory_format, json.dumps(model.config, sort_keys=True))
    key += (tuple(size), tuple(cap), batch_size)
    if key in _TILES:
        return _TILES[key]
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
        _TILES[key] = candidates[0][0]
        return _TILES[key]
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
    _TILES[key] = best
    return best


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
class _Region:
    """Output pixels ``[origin, origin + size)``, the tiles covering them per axis (and with TTA
    those of the views transposed in (y, x)), and the input box ``[start, stop)`` they read. With
    TTA the tiles cover more: ``margin`` px before the region (and as many after it, plus what
    puts its end where the image's end lies on the pooling grid, :func:`_plan_region`)."""

    origin: tuple[int, ...]
    size: tuple[int, ...]
    plans: tuple[AxisPlan, ...]
    swapped: tuple[AxisPlan, ...]  # empty without TTA
    start: tuple[int, ...]
    stop: tuple[int, ...]
    margin: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Views:
    """Test-time augmentation of a prediction: on or off, the reach of an affinity net's offsets
    per axis (:func:`_tta_reach`), and the extent of the whole image or volume (its end fixes the
    pooling grid of the flipped views)."""

    tta: bool
    reach: tuple[int, ...]
    extent: tuple[int, ...]


def _tta_reach(config: dict[str, Any], tta: bool) -> tuple[int, ...]:
    """Per axis, how far a TTA view of an affinity net's region must extend: a channel that a
    view reverses is read one offset away (:func:`unetpipe.affinities.affinities_of_view`)."""
    if not tta or "offsets" not in config:
        return ()
    return tuple(max(abs(int(o[a])) for o in config["offsets"]) for a in range(config["dims"]))


def _plan_region(
    geometry: Geometry,
    origin: Sequence[int],
    size: Sequence[int],
    max_tile: Sequence[int],
    views: _Views,
) -> _Region:
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
        return _Region(tuple(origin), tuple(size), plans, (), start, stop)
    reach = views.reach or (0,) * len(size)
    margin = tuple(math.ceil(r / a) * a for r, a in zip(reach, geometry.align, strict=True))
    grown = tuple(
        s + 2 * m + (n - o - s) % a
        for o, s, m, n, a in zip(origin, size, margin, views.extent, geometry.align, strict=True)
    )
    plans = tuple(plan_axis(s, t, a) for s, t, a in zip(grown, max_tile, axes, strict=True))
    # Transposed views swap the last two axes (with their tile limits); TTA needs the same
    # geometry on both (checked by _check_tta).
    swapped = plans[:-2] + (
        plan_axis(grown[-1], max_tile[-1], axes[-1]),
        plan_axis(grown[-2], max_tile[-2], axes[-2]),
    )
    extra = max(
        p.read_length - p.size - 2 * h for p, h in zip(plans + swapped, halo + halo, strict=True)
    )
    start = tuple(o - m - h - extra for o, m, h in zip(origin, margin, halo, strict=True))
    stop = tuple(a + g + 2 * (h + extra) for a, g, h in zip(start, grown, halo, strict=True))
    return _Region(tuple(origin), tuple(size), plans, swapped, start, stop, margin)


def _predict_region(model: UNet, data: np.ndarray, region: _Region, run: _Pass) -> np.ndarray:
    """Probabilities of the output pixels of ``region`` from ``data``, its normalised, mirrored
    input box ``[region.start, region.stop)``."""
    if not region.swapped:
        return _run_tiles(model, data, region.plans, run)
    extra = region.origin[0] - region.margin[0] - region.start[0] - Geometry.of(model).halo[0]
    offsets = model.config.get("offsets")
    total = np.zeros((model.config["n_classes"], *region.size), dtype=np.float32)
    for flips, swap in _DIHEDRAL:
        view = _transform(data, flips, swap)
        axis_plans = region.swapped if swap else region.plans
        view = view[tuple(slice(extra, extra + p.read_length) for p in axis_plans)]
        probs = _untransform(_run_tiles(model, view, axis_plans, run), flips, swap)
        if offsets is not None:  # channels to the image's offsets, the margin cropped
            total += affinities_of_view(probs, offsets, flips, swap, region.margin, region.size)
        else:
            total += probs[
                (
                    slice(None),
                    *(slice(m, m + n) for m, n in zip(region.margin, region.size, strict=True)),
                )
            ]
    return total / len(_DIHEDRAL)


def _run_tiles(
    model: UNet, padded: np.ndarray, plans: Sequence[AxisPlan], run: _Pass
) -> np.ndarray:
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


def _forward(model: UNet, tiles: np.ndarray, run: _Pass) -> np.ndarray:
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


# --- Zarr volumes with Dask ----------------------------------------------------------------------
#
# The volume is cut into output blocks (one Zarr chunk each) and the blocks into batches (one
# task each: neighbouring blocks, so that a 10^12-voxel volume is thousands of tasks, not
# millions). Tasks are submitted a window at a time, so the scheduler never holds the whole
# graph. One marker store, a uint64 Zarr array with an entry per block and a chunk per batch,
# records the digest of the input each finished block was computed from: a restarted run keeps
# a finished block only when its input still has that digest.

BATCH_BLOCKS = 256  # at most this many blocks per task ...
MIN_TASKS = 1000  # ... and one block per task while the volume has fewer blocks than this
WINDOW_PER_SLOT = 4  # tasks in flight per worker thread (at least MIN_WINDOW)
MIN_WINDOW = 64
SLURM_KEYS = (
    "queue",
    "account",
    "cores",
    "memory",
    "walltime",
    "job_extra_directives",
    "log_directory",
    "interface",
)


@dataclass(frozen=True)
class _Job:
    """Everything a task needs to predict its batch of blocks; small and picklable."""

    model_path: str
    source: ImageArray  # (z, y, x), reopened lazily by each worker
    target: str  # the temporary output array
    geometry: Geometry
    block: tuple[int, int, int]
    grid: tuple[int, int, int]  # blocks per axis
    batch: tuple[int, int, int]  # blocks per task along each axis
    max_tile: tuple[int, ...]
    batch_size: int
    mirror: str
    tta: bool
    dtype: str
    device: str
    precision: str  # resolved
    memory_format: str
    reach: tuple[int, ...] = ()  # TTA of an affinity net: offsets' reach per axis

    @property
    def run(self) -> _Pass:
        return _Pass(self.batch_size, self.precision, self.memory_format)


_MODELS: dict[tuple[str, int, str, str], tuple[UNet, dict[str, Any]]] = {}
_MODELS_LOCK = threading.Lock()


def _worker_model(path: str, device: str, fmt: str = "contiguous") -> tuple[UNet, dict[str, Any]]:
    """The model, loaded once per worker process (shared by its threads), in memory format
    ``fmt``; the process keeps one model file, in each format asked for."""
    device = _resolve_device(device)
    key = (path, Path(path).stat().st_mtime_ns, device, fmt)
    with _MODELS_LOCK:
        if key not in _MODELS:
            model, metadata = load_model(path, device)
            model.to(memory_format=torch_memory_format(fmt, model.config["dims"] + 2))
            for other in [k for k in _MODELS if k[:3] != key[:3]]:
                del _MODELS[other]
            _MODELS[key] = (model, metadata)
        return _MODELS[key]


def _resolve_device(device: str) -> str:
    """``auto`` on the worker itself: its GPU when it has one (a SLURM job sees only its own);
    with several, worker ``i`` of a local cluster takes GPU ``i mod count``."""
    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        name = None
    return f"cuda:{name % count}" if isinstance(name, int) and count > 1 else "cuda"


def _markers(target: str | Path) -> Path:
    """The marker store of a partial output: input digest per block, 0 = not written."""
    return Path(target) / ".done"


def _worker_id() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return f"{socket.gethostname()}:{os.getpid()}" + (f" (SLURM job {job})" if job else "")


class _CheckedSource:
    """The input as a block reads it: every box read is hashed (the block's input digest) and
    checked for NaN and inf (missing and undecodable chunks: :class:`unetpipe.io.CheckedArray`)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = array.shape
        self._hash = hashlib.blake2b(digest_size=8)

    def __getitem__(self, box: tuple[slice, ...]) -> np.ndarray:
        data = np.asarray(self.array[box])  # a missing or damaged chunk: named by ImageArray
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            first = np.argwhere(~np.isfinite(data))[0]
            value = data[tuple(first)]
            where = tuple(int(s.start + i) for s, i in zip(box, first, strict=True))
            raise ValueError(
                f"{_name(self.array)} contains {'NaN' if np.isnan(value) else f'{value:+}'} at "
                f"(z, y, x) = {where}; fill or mask NaN and inf before prediction"
            )
        self._hash.update(repr([(s.start, s.stop) for s in box]).encode())
        self._hash.update(data.dtype.str.encode())
        self._hash.update(np.ascontiguousarray(data).data)
        return data

    def digest(self) -> int:
        """64 bits of blake2b over the boxes read (coordinates, dtype, pixels); never 0."""
        return int.from_bytes(self._hash.digest(), "little") or 1


def _name(array: Any) -> str:
    where = location(array)
    return f"input {where}" if where else f"input {getattr(array, 'store', 'array')}"


def _block_box(job: _Job, index: Sequence[int]) -> tuple[list[int], list[int]]:
    origin = [i * b for i, b in zip(index, job.block, strict=True)]
    size = [min(b, n - o) for b, o, n in zip(job.block, origin, job.source.shape, strict=True)]
    return origin, size


def _read_block(
    job: _Job, index: Sequence[int], normalization: dict[str, float]
) -> tuple[np.ndarray, _Region, int, float]:
    """CPU side before the network: the block's input box (block + halo, mirrored at the
    border) read once, checked, hashed and normalised. Returns (data, region, digest, seconds)."""
    started = time.perf_counter()
    origin, size = _block_box(job, index)
    lead = 3 - job.geometry.dims  # a 2D net: the block's z range, each slice on its own
    views = _Views(job.tta, job.reach, job.source.shape[lead:])
    region = _plan_region(job.geometry, origin[lead:], size[lead:], job.max_tile, views)
    start = (*origin[:lead], *region.start)
    stop = (*(o + s for o, s in zip(origin[:lead], size[:lead], strict=True)), *region.stop)
    source = _CheckedSource(job.source)
    data = normalize(read_mirrored(source, start, stop, job.mirror), normalization)
    return data, region, source.digest(), time.perf_counter() - started


def _predict_block(model: UNet, job: _Job, data: np.ndarray, region: _Region) -> np.ndarray:
    """The network over one block's input: (classes, z, y, x) probabilities, float32."""
    if job.geometry.dims == 3:
        return _predict_region(model, data, region, job.run)
    return np.stack([_predict_region(model, plane, region, job.run) for plane in data], 1)


def _encode(probs: np.ndarray, dtype: str) -> np.ndarray:
    """float16, or uint8 ``round(255 p)`` (half to even, as np.rint); cast by torch, which is
    vectorised where numpy's float16 cast is not (18x faster here)."""
    values = torch.from_numpy(probs)
    if dtype == "uint8":
        return torch.round(values * 255).to(torch.uint8).numpy()
    return values.to(torch.float16).numpy()


def _predict_batch(job: _Job, batch: tuple[int, int, int]) -> dict[str, Any]:
    """One task: the blocks of ``batch``, in a pipeline where reading the next block and writing
    the previous one overlap the network's work on the current one. A block finished earlier is
    kept when its input digest is unchanged; the marker of a block follows its complete write."""
    started = time.perf_counter()
    model, metadata = _worker_model(job.model_path, job.device, job.memory_format)
    target = zarr.open_array(job.target, mode="r+")
    markers = zarr.open_array(str(_markers(job.target)), mode="r+")
    span = tuple(
        slice(i * b, min((i + 1) * b, g))
        for i, b, g in zip(batch, job.batch, job.grid, strict=True)
    )
    previous = markers[span]
    current = previous.copy()
    indices = list(itertools.product(*(range(s.start, s.stop) for s in span)))
    stats = {"blocks": len(indices), "computed": 0, "reused": 0, "stale": 0}
    seconds = {"read": 0.0, "compute": 0.0, "write": 0.0}

    def write(index: Sequence[int], local: tuple[int, ...], probs: np.ndarray, digest: int) -> None:
        begun = time.perf_counter()
        origin, size = _block_box(job, index)
        box = tuple(slice(o, o + s) for o, s in zip(origin, size, strict=True))
        target[(slice(None), *box)] = _encode(probs, job.dtype)
        current[local] = digest
        markers[span] = current  # one small chunk, replaced atomically by the store
        seconds["write"] += time.perf_counter() - begun

    read = functools.partial(_read_block, job, normalization=metadata["normalization"])
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        writes: deque[Future] = deque()
        upcoming = reader.submit(read, indices[0])
        for k, index in enumerate(indices):
            data, region, digest, read_seconds = upcoming.result()
            seconds["read"] += read_seconds
            if k + 1 < len(indices):
                upcoming = reader.submit(read, indices[k + 1])
            local = tuple(i - s.start for i, s in zip(index, span, strict=True))
            if int(previous[local]) == digest:
                stats["reused"] += 1
                continue
            stats["stale"] += int(previous[local]) != 0
            begun = time.perf_counter()
            probs = _predict_block(model, job, data, region)
            seconds["compute"] += time.perf_counter() - begun
            stats["computed"] += 1
            writes.append(writer.submit(write, index, local, probs, digest))
            while len(writes) > 2:  # bounded memory when writing is the slower side
                writes.popleft().result()
        for pending in writes:
            pending.result()
    return {
        **stats,
        **{f"{k}_seconds": v for k, v in seconds.items()},
        "task_seconds": time.perf_counter() - started,
        "worker": _worker_id(),
    }


def _block_shape(
    shape: Sequence[int], dims: int, max_tile: Sequence[int], geometry: Geometry
) -> tuple[int, int, int]:
    """Output blocks: one tile each where the volume allows, split evenly, on the pooling grid."""
    block = [1] if dims == 2 else []
    for size, tile, axis in zip(shape[3 - dims :], max_tile, geometry.axes, strict=True):
        largest = axis.tile_output(tile) // axis.align * axis.align
        count = math.ceil(size / largest)
        block.append(min(largest, math.ceil(size / count / axis.align) * axis.align))
    return tuple(block)  # type: ignore[return-value]


def _batch_shape(grid: Sequence[int]) -> tuple[int, int, int]:
    """Blocks per task along (z, y, x): one while the volume has fewer than MIN_TASKS blocks,
    else up to BATCH_BLOCKS neighbours, filled along x, then y, then z. A function of the block
    grid only, so that a resumed run cuts the same batches."""
    wanted = min(BATCH_BLOCKS, max(1, math.prod(grid) // MIN_TASKS))
    batch = []
    for extent in reversed(grid):
        batch.append(min(extent, wanted))
        wanted = max(1, wanted // batch[-1])
    return tuple(reversed(batch))  # type: ignore[return-value]


def _batches(job: _Job) -> Iterator[tuple[int, int, int]]:
    """Batch indices in order, generated lazily (never a list of every block)."""
    counts = [math.ceil(g / b) for g, b in zip(job.grid, job.batch, strict=True)]
    return itertools.product(*(range(c) for c in counts))  # type: ignore[return-value]


@writes_output("output_zarr_path", "input_zarr_array", "model_path")
def predict_zarr(
    model_path: str | Path,
    input_zarr_array: Any,
    output_zarr_path: str | Path,
    *,
    tile: int | Sequence[int] | None = None,
    block: Sequence[int] | None = None,
    batch_size: int = 1,
    memory_gb: float = DEFAULT_MEMORY_GB,
    mirror: str = "reflect",
    tta: bool = False,
    dtype: str = "float16",
    precision: str = "auto",
    memory_format: str = "auto",
    device: str = "auto",
    scheduler: str = "threads",
    n_workers: int = 1,
    threads_per_worker: int | None = None,
    address: str | None = None,
    slurm: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Predict a volume (z, y, x) of any size into an OME-Zarr image (classes, z, y, x).

    The input is a TIFF, a Zarr array or an OME-Zarr image, read lazily
    (:func:`unetpipe.ngff.open_image`); the output's full-resolution level ``0`` gets the
    input's voxel size and a pyramid (:func:`unetpipe.ngff.write_image`).

    The volume is cut into output blocks on the pooling grid, one Zarr chunk each, and the
    blocks into batches, one task each; a task reads each block plus halo, runs its tiles
    through the model (loaded once per worker) and writes its own chunk, so memory is bounded
    by the blocks in flight. Output goes to ``<output>.partial`` and becomes level 0 of the
    OME-Zarr ``output`` when complete; a killed run restarted with the same model and
    parameters keeps the blocks already written
    whose input is unchanged (checked by digest). ``dtype`` float16 stores probabilities, uint8
    stores ``round(255 p)``. ``precision``: the network's (:func:`predict_image`), resolved
    here for the tasks' device (with another scheduler and device auto: for this machine's CPU);
    with ``tile`` None the largest tile is the memory budget's in float32 and measured in reduced
    precision (:func:`pass_tile`; recorded, and kept by a resumed run);
    the output's attributes record it and the memory format measured here for it (a resumed run
    keeps the recorded format) unless ``memory_format`` is contiguous or channels_last.
    ``scheduler``: threads, local (a distributed LocalCluster), address (an existing
    scheduler) or slurm (a dask-jobqueue SLURMCluster, ``slurm`` its options).
    The output records ``input_sha256``, the digest of the input as stored
    (:func:`unetpipe.io.stored_digest`), which evaluate matches against the dataset it scores.
    Returns counts (blocks, computed, reused, stale, per worker) and timings. An existing output
    is replaced only if unetpipe wrote it and ``overwrite`` (:func:`unetpipe.io.writes_output`).
    """
    slurm = dict(slurm or {})
    _check_run_settings(dtype, scheduler, mirror, device, n_workers, threads_per_worker, slurm)
    # The device of the tasks as seen from here (other schedulers' workers may differ).
    here = device if scheduler == "threads" or device != "auto" else "cpu"
    precision = resolve_precision(precision, _resolve_device(here))
    started = time.perf_counter()
    source = open_image(input_zarr_array)
    model_path = str(Path(model_path).resolve())
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    output = Path(output_zarr_path)
    partial = output.with_name(output.name + ".partial")
    check_disjoint(partial, location(source), model_path)
    # Loaded here to check it; the threads scheduler's workers then share this copy.
    model, metadata = _worker_model(model_path, device if scheduler == "threads" else "cpu")
    if "normalization" not in metadata:
        raise ValueError(f"{model_path} has no normalization metadata (mean/std); re-export it")
    _check_tta(model, tta)
    dims = model.config["dims"]
    if source.ndim != 3:
        raise ValueError(f"input must be a (z, y, x) array, got shape {source.shape}")
    if 0 in source.shape:
        raise ValueError(f"input array is empty (shape {source.shape})")
    geometry = Geometry.of(model)
    given = None if block is None else tuple(int(b) for b in block)
    if given is not None:
        if len(given) != 3 or (dims == 2 and given[0] != 1) or min(given) < 1:
            raise ValueError(f"block must be (z, y, x) with z = 1 for a 2D net, got {given}")
        if any(b % a for b, a in zip(given[3 - dims :], geometry.align, strict=True)):
            raise ValueError(
                f"block extents must be multiples of {' x '.join(map(str, geometry.align))} "
                "(the pooling grid per axis)"
            )
    # The output region of one block at most, and the tile covering it within the budget.
    region = tuple(
        min(b, n)
        for b, n in zip((given or source.shape)[3 - dims :], source.shape[3 - dims :], strict=True)
    )
    cap = _max_tile(model, tile, batch_size, memory_gb, region)
    covering = tuple(
        plan_axis(n, c, a).tile for n, c, a in zip(region, cap, geometry.axes, strict=True)
    )
    model_sha256 = sha256sum(model_path)

    def settings(max_tile: tuple[int, ...]) -> tuple[tuple[int, ...], dict[str, Any], str]:
        """The blocks, the output's attributes and their fingerprint for a largest tile."""
        blocks = given or _block_shape(source.shape, dims, max_tile, geometry)
        attrs = {
            "model": relative_to_output(model_path, output),
            "model_sha256": model_sha256,
            "model_config": model.config,
            "normalization": metadata["normalization"],
            "input": {
                "path": relative_to_output(source.path, output),
                "format": source.format,
                "shape": list(source.shape),
            },
            "input_attrs": source.attrs,
            "tile": list(max_tile),
            "block": list(blocks),
            "mirror": mirror,
            "tta": tta,
            "dtype": dtype,
            "precision": precision,
            "scale": 1 / 255 if dtype == "uint8" else 1.0,
            "axes": ["c", "z", "y", "x"],
        }
        if "offsets" in model.config:  # an affinity network: channel k relates x, x + offsets[k]
            attrs["offsets"] = model.config["offsets"]
            attrs["channels"] = channel_names(model.config["offsets"])
        return blocks, attrs, hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest()

    # A resumed run keeps the tile and the memory format its partial output recorded; otherwise
    # the format is measured, then (tile None) the tile in that format.
    recorded = _recorded(partial)
    max_tile = cap if tile is not None else tuple(recorded.get("tile", ())) or None
    if max_tile is not None and any(t > c for t, c in zip(max_tile, cap, strict=False)):
        max_tile = None  # recorded under a larger memory budget
    how_tile = "configured" if tile is not None else "recorded"
    resumed = False
    if max_tile is not None:
        block, attrs, fingerprint = settings(max_tile)
        resumed = _same_run(partial, fingerprint, *_grid_and_batch(source.shape, block))
    fmt, how = choose_memory_format(
        memory_format,
        recorded.get("memory_format") if resumed else None,
        lambda: pass_memory_format(model, covering, batch_size, precision),
    )
    if max_tile is None or (tile is None and not resumed):
        # Measured in reduced precision only: in float32 the budget's (largest) tile was never
        # slower end to end (bench_predict.py: a measured 540 px tile 0.90x of it, 2048^2, 2 cores).
        measured = precision != "float32"
        max_tile = pass_tile(model, region, cap, batch_size, precision, fmt) if measured else cap
        block, attrs, fingerprint = settings(max_tile)
        how_tile = "measured" if measured else "memory budget"
    grid, batch = _grid_and_batch(source.shape, block)
    job = _Job(
        model_path,
        source,
        str(partial),
        geometry,
        block,  # type: ignore[arg-type]
        grid,  # type: ignore[arg-type]
        batch,
        max_tile,
        batch_size,
        mirror,
        tta,
        dtype,
        device,
        precision,
        fmt,
        reach=_tta_reach(model.config, tta),
    )
    if not resumed:
        attrs = {**attrs, "memory_format": fmt, "fingerprint": fingerprint}
        _create_partial(partial, attrs, model.config["n_classes"], source.shape, job)
    elif how == "configured":  # the format of this run, the last to write blocks
        zarr.open_array(str(partial), mode="r+").attrs["memory_format"] = fmt
    # What was read, for evaluate to match against a dataset; outside the fingerprint, so that
    # a resumed run still keeps each block whose own input is unchanged.
    zarr.open_array(str(partial), mode="r+").attrs["input_sha256"] = _input_digest(source)
    n_blocks = math.prod(grid)
    log.info(
        "predicting %s: %d blocks of %s in tasks of %s blocks, tiles up to %s (%s), %s, memory "
        "format %s (%s), scheduler %s%s",
        source.shape,
        n_blocks,
        block,
        job.batch,
        max_tile,
        how_tile,
        precision,
        fmt,
        how,
        scheduler,
        "; resuming: finished blocks are kept where their input is unchanged" if resumed else "",
    )
    totals = _compute(job, scheduler, n_workers, threads_per_worker, address, slurm, progress)
    if totals["blocks"] != n_blocks:
        raise RuntimeError(
            f"{n_blocks - totals['blocks']} blocks were not written; rerun to resume"
        )
    if resumed:
        log.info(
            "resume: %d finished blocks kept (input unchanged), %d recomputed because their "
            "input changed since they were written, %d not written before",
            totals["reused"],
            totals["stale"],
            totals["computed"] - totals["stale"],
        )
    shutil.rmtree(_markers(partial))
    write_image(output, partial, source.space)
    seconds = time.perf_counter() - started
    log.info(
        "wrote %s in %.1f s; in tasks: reading %.1f s, network %.1f s, writing %.1f s, "
        "task time %.1f s; blocks computed per worker: %s",
        output,
        seconds,
        totals["read_seconds"],
        totals["compute_seconds"],
        totals["write_seconds"],
        totals["task_seconds"],
        totals["workers"],
    )
    return {**totals, "seconds": seconds, "block": block, "batch": job.batch}


def _input_digest(source: ImageArray) -> str | None:
    """sha256 of the input as stored (:func:`unetpipe.io.stored_digest`: a TIFF's bytes, a Zarr
    array's metadata and chunks); None for an array that is not on the local file system."""
    path = Path(source.path)
    return stored_digest(path) if path.exists() else None


def _check_run_settings(
    dtype: str,
    scheduler: str,
    mirror: str,
    device: str,
    n_workers: int,
    threads_per_worker: int | None,
    slurm: dict[str, Any],
) -> None:
    """One clear error for a bad setting, before anything is read or written."""
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if mirror not in MIRROR_MODES:
        raise ValueError(f"mirror must be one of {MIRROR_MODES}, got {mirror!r}")
    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if value is None and name == "threads_per_worker":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        torch.device("cpu" if device == "auto" else device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from err
    unknown = sorted(set(slurm) - set(SLURM_KEYS))
    if unknown:
        raise ValueError(f"unknown slurm options {unknown}; known: {list(SLURM_KEYS)}")


def _create_partial(
    partial: Path, attrs: dict[str, Any], classes: int, shape: Sequence[int], job: _Job
) -> None:
    """Start afresh (a partial output of other parameters, never a folder unetpipe did not
    write, is removed): the output array with ``attrs`` and its marker store (one chunk per
    batch)."""
    if partial.exists():
        refuse_foreign(partial)
        shutil.rmtree(partial)
    zarr.create_array(
        str(partial),
        shape=(classes, *shape),
        chunks=(classes, *job.block),
        dtype=job.dtype,
        fill_value=0,
        attributes={PROVENANCE: "predict", **attrs},  # marked from its first byte
        config=STORE_EVERY_CHUNK,
    )
    zarr.create_array(
        str(_markers(partial)),
        shape=job.grid,
        chunks=job.batch,
        dtype="uint64",
        fill_value=0,
        compressors=None,
    )


def _same_run(partial: Path, fingerprint: str, grid: Sequence[int], batch: Sequence[int]) -> bool:
    """Whether ``partial`` was made by the same model and parameters (resumable)."""
    metadata = partial / "zarr.json"
    if not (metadata.is_file() and (_markers(partial) / "zarr.json").is_file()):
        return False
    if json.loads(metadata.read_text())["attributes"].get("fingerprint") != fingerprint:
        return False
    markers = zarr.open_array(str(_markers(partial)), mode="r")
    return markers.shape == tuple(grid) and markers.chunks == tuple(batch)


def _recorded(partial: Path) -> dict[str, Any]:
    """The attributes a partial output was started with ({} when there is none): a resumed run
    keeps its tile and memory format."""
    try:  # a damaged or foreign partial is no run to resume: measured afresh, refused later
        recorded = json.loads((partial / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    tile = recorded.get("tile")
    if not (isinstance(tile, list) and all(isinstance(t, int) for t in tile)):
        recorded.pop("tile", None)
    return recorded


def _grid_and_batch(
    shape: Sequence[int], block: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    """The grid of blocks over a volume and the blocks of one task."""
    grid = tuple(math.ceil(n / b) for n, b in zip(shape, block, strict=True))
    return grid, _batch_shape(grid)


def _compute(
    job: _Job,
    scheduler: str,
    n_workers: int,
    threads_per_worker: int | None,
    address: str | None,
    slurm: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Run every batch on the scheduler; the summed counts and timings of the tasks."""
    if scheduler == "threads":
        with torch_threads(threads_per_worker), ThreadPoolExecutor(n_workers) as executor:
            return _run_batches(executor, _predict_batch, job, _batches(job), n_workers, progress)
    from distributed import Client

    with _cluster(scheduler, n_workers, threads_per_worker, address, slurm) as target:
        with Client(target) as client:
            if scheduler == "address":
                slots = sum(client.nthreads().values())
            else:
                per_worker = slurm.get("cores", 4) if scheduler == "slurm" else threads_per_worker
                slots = n_workers * (per_worker or 1)
            executor = client.get_executor(pure=False)
            return _run_batches(executor, _predict_batch, job, _batches(job), slots, progress)


def _run_batches(
    executor: Executor,
    task: Callable[[_Job, tuple[int, int, int]], dict[str, Any]],
    job: _Job,
    batches: Iterator[tuple[int, int, int]],
    slots: int,
    progress: bool,
) -> dict[str, Any]:
    """Submit ``task(job, batch)`` for every batch, keeping a window of tasks in flight (the
    scheduler holds that many, whatever the volume); sum the results as they arrive."""
    window = max(MIN_WINDOW, WINDOW_PER_SLOT * slots)
    totals: dict[str, Any] = {"workers": {}}
    pending: set[Future] = set()
    bar = tqdm(total=math.prod(job.grid), unit="block", disable=not progress, smoothing=0.05)

    def collect(done: set[Future]) -> None:
        for future in done:
            result = future.result()
            worker = result.pop("worker")
            totals["workers"][worker] = totals["workers"].get(worker, 0) + result["computed"]
            for key, value in result.items():
                totals[key] = totals.get(key, 0) + value
            bar.update(result["blocks"])

    try:
        for batch in batches:
            pending.add(executor.submit(task, job, batch))
            if len(pending) >= window:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            collect(done)
    finally:
        for future in pending:
            future.cancel()
        bar.close()
    return totals


@contextlib.contextmanager
def _cluster(
    scheduler: str,
    n_workers: int,
    threads_per_worker: int | None,
    address: str | None,
    slurm: dict[str, Any],
) -> Iterator[Any]:
    """The scheduler address, a LocalCluster or a SLURMCluster (closed afterwards)."""
    if scheduler == "address":
        if not address:
            raise ValueError("scheduler 'address' needs predict.address (tcp://host:port)")
        yield address
        return
    if scheduler == "local":
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker or 1, processes=True
        )
    else:
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster(**slurm_cluster_options(slurm))
        cluster.scale(jobs=n_workers)
    with cluster:
        yield cluster


def slurm_cluster_options(slurm: dict[str, Any]) -> dict[str, Any]:
    """dask-jobqueue ``SLURMCluster`` keyword arguments from the ``predict.slurm`` config:
    one worker process per job (one model per GPU)."""
    options = {
        "job_name": "unetpipe-predict",
        "queue": slurm.get("queue"),
        "account": slurm.get("account"),
        "cores": slurm.get("cores", 4),
        "processes": 1,
        "memory": slurm.get("memory", "16GB"),
        "walltime": slurm.get("walltime", "01:00:00"),
        "job_extra_directives": list(slurm.get("job_extra_directives", [])),
        "log_directory": slurm.get("log_directory"),
        "interface": slurm.get("interface"),
    }
    return {k: v for k, v in options.items() if v is not None}
