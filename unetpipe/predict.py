"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2), in memory and over Zarr volumes.

:func:`predict_image` tiles an in-memory image; :func:`predict_zarr` runs the same tiles block by
block over a Zarr volume with Dask (threads, a local cluster, a scheduler address or SLURM), writes
chunk-aligned output and resumes after being killed. Geometry and mirroring: :mod:`unetpipe.tiling`.
Because blocks and tiles start on the pooling grid, both equal one pass of the network over the
whole mirror-padded image.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from unetpipe.intensity import normalize
from unetpipe.io import sha256sum
from unetpipe.model import UNet, load_model
from unetpipe.ngff import ImageArray, open_image, write_image
from unetpipe.tiling import AxisPlan, Geometry, max_tile_for_budget, plan_axis, read_mirrored

log = logging.getLogger(__name__)

DEFAULT_MEMORY_GB = 4.0
OUTPUT_DTYPES = ("float16", "uint8")
SCHEDULERS = ("threads", "local", "address", "slurm")
_CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}

Reader = Callable[[Sequence[int], Sequence[int]], np.ndarray]


def predict_image(
    model: UNet,
    image: np.ndarray,
    tile: int | Sequence[int] | None = None,
    batch_size: int = 1,
    *,
    mirror: str = "reflect",
    tta: bool = False,
    memory_gb: float = DEFAULT_MEMORY_GB,
) -> np.ndarray:
    """Class probabilities (softmax), shaped ``(classes, *image.shape)``, float32.

    ``image`` is a normalised 2D image (3D volume for a 3D net). ``tile`` is the largest input
    tile per axis (a valid extent); ``None`` takes the largest that fits ``memory_gb``. Tiles are
    then fitted to the image. ``mirror`` is numpy's pad mode for context past the border;
    ``tta`` averages over the 8 flips/rotations of the (y, x) plane.
    """
    if model.training:
        raise ValueError("predict_image needs the model in eval mode (call model.eval())")
    geometry = Geometry.of(model)
    image = np.asarray(image, dtype=np.float32)
    _check_image(image, geometry.dims, "image")
    max_tile = _max_tile(model, tile, batch_size, memory_gb)
    with _channels_last(model):
        return _predict_region(
            model,
            lambda start, stop: read_mirrored(image, start, stop, mirror),
            (0,) * geometry.dims,
            image.shape,
            max_tile,
            batch_size,
            tta,
        )


def _check_image(image: np.ndarray, dims: int, name: str) -> None:
    if image.ndim != dims:
        raise ValueError(
            f"{name} must have {dims} axes for a {dims}D U-Net, got shape {image.shape}"
        )
    if image.size == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")
    if np.issubdtype(image.dtype, np.floating) and np.isnan(image).any():
        raise ValueError(f"{name} contains NaN; fill or mask them before prediction")


def _max_tile(
    model: UNet, tile: int | Sequence[int] | None, batch_size: int, memory_gb: float
) -> tuple[int, ...]:
    geometry = Geometry.of(model)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if tile is None:
        tile = max_tile_for_budget(model.config, geometry, memory_gb * 2**30, batch_size)
    tiles = (tile,) * geometry.dims if isinstance(tile, int) else tuple(tile)
    if len(tiles) != geometry.dims:
        raise ValueError(f"tile needs {geometry.dims} extents, got {tiles}")
    for extent in tiles:
        geometry.tile_output(extent)  # ValueError naming the nearest valid tiles
    return tiles


@contextlib.contextmanager
def _channels_last(model: UNet) -> Iterator[None]:
    """On CPU, run the network channels_last (1.3-1.8x faster inference, DESIGN.md section 5)."""
    dims = model.config["dims"]
    fmt = _CHANNELS_LAST[dims]
    params = [p for p in model.parameters() if p.dim() == dims + 2]
    convert = params[0].device.type == "cpu" and not all(
        p.is_contiguous(memory_format=fmt) for p in params
    )
    if convert:
        model.to(memory_format=fmt)
    try:
        yield
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)


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


def _predict_region(
    model: UNet,
    read: Reader,
    origin: Sequence[int],
    size: Sequence[int],
    max_tile: Sequence[int],
    batch_size: int,
    tta: bool,
) -> np.ndarray:
    """Probabilities of output pixels ``[origin, origin + size)``; ``read(start, stop)`` returns
    the (mirrored) input region. ``origin`` must lie on the pooling grid."""
    geometry = Geometry.of(model)
    halo = geometry.halo
    plans = [plan_axis(s, t, geometry) for s, t in zip(size, max_tile, strict=True)]
    if not tta:
        start = [o - halo for o in origin]
        padded = read(start, [a + p.read_length for a, p in zip(start, plans, strict=True)])
        return _run_tiles(model, padded, plans, batch_size)
    # Transposed views swap the last two axes (with their tile limits).
    swapped = plans[:-2] + [
        plan_axis(size[-1], max_tile[-1], geometry),
        plan_axis(size[-2], max_tile[-2], geometry),
    ]
    extra = max(p.read_length - p.size - 2 * halo for p in plans + swapped)
    region = read(
        [o - halo - extra for o in origin],
        [o + s + halo + extra for o, s in zip(origin, size, strict=True)],
    )
    total = np.zeros((model.config["n_classes"], *size), dtype=np.float32)
    for flips, swap in _DIHEDRAL:
        view = _transform(region, flips, swap)
        axis_plans = swapped if swap else plans
        view = view[tuple(slice(extra, extra + p.read_length) for p in axis_plans)]
        total += _untransform(_run_tiles(model, view, axis_plans, batch_size), flips, swap)
    return total / len(_DIHEDRAL)


def _run_tiles(
    model: UNet, padded: np.ndarray, plans: Sequence[AxisPlan], batch_size: int
) -> np.ndarray:
    """Run every tile of ``plans`` over ``padded`` in batches; assemble the output region."""
    out = np.empty((model.config["n_classes"], *(p.size for p in plans)), dtype=np.float32)
    origins = list(itertools.product(*(p.starts for p in plans)))
    for first in range(0, len(origins), batch_size):
        batch = origins[first : first + batch_size]
        tiles = np.stack(
            [
                padded[tuple(slice(o, o + p.tile) for o, p in zip(corner, plans, strict=True))]
                for corner in batch
            ]
        )
        for corner, probs in zip(batch, _forward(model, tiles), strict=True):
            keep = tuple(
                slice(0, min(p.output, p.size - o)) for o, p in zip(corner, plans, strict=True)
            )
            place = tuple(slice(o, o + k.stop) for o, k in zip(corner, keep, strict=True))
            out[(slice(None), *place)] = probs[(slice(None), *keep)]
    return out


def _forward(model: UNet, tiles: np.ndarray) -> np.ndarray:
    """Softmax of the network over a batch of tiles ``(batch, *tile)``; same-padded networks are
    cropped by the halo so that they keep only pixels with full context."""
    geometry = Geometry.of(model)
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32)).unsqueeze(1).to(device)
    if device.type == "cpu":
        x = x.contiguous(memory_format=_CHANNELS_LAST[geometry.dims])
    with torch.inference_mode():
        logits = model(x)
        if geometry.padding == "same":
            crop = slice(geometry.halo, -geometry.halo)
            logits = logits[(slice(None), slice(None), *[crop] * geometry.dims)]
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


# --- Zarr volumes with Dask ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """Everything a Dask task needs to predict one block; small and picklable."""

    model_path: str
    source: ImageArray  # (z, y, x), reopened lazily by each worker
    target: str  # the temporary output array
    block: tuple[int, int, int]
    max_tile: tuple[int, ...]
    batch_size: int
    mirror: str
    tta: bool
    dtype: str
    device: str


_MODELS: dict[tuple[str, int, str], tuple[UNet, dict[str, Any]]] = {}
_MODELS_LOCK = threading.Lock()


def _worker_model(path: str, device: str) -> tuple[UNet, dict[str, Any]]:
    """The model, loaded once per worker process (shared by its threads), channels_last on CPU."""
    key = (path, Path(path).stat().st_mtime_ns, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            model, metadata = load_model(path, device)
            if torch.device(device).type == "cpu":
                model.to(memory_format=_CHANNELS_LAST[model.config["dims"]])
            _MODELS.clear()
            _MODELS[key] = (model, metadata)
        return _MODELS[key]


def _done_dir(target: str | Path) -> Path:
    return Path(target) / ".done"


def _predict_block(job: _Job, index: tuple[int, int, int]) -> tuple[int, int, int]:
    """One Dask task: read block ``index`` plus halo, predict its tiles, write its own chunk."""
    model, metadata = _worker_model(job.model_path, job.device)
    dims = model.config["dims"]
    shape = job.source.shape
    origin = [i * b for i, b in zip(index, job.block, strict=True)]
    size = [min(b, n - o) for b, o, n in zip(job.block, origin, shape, strict=True)]

    def read(start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        region = read_mirrored(job.source, start, stop, job.mirror)
        if np.issubdtype(region.dtype, np.floating) and np.isnan(region).any():
            raise ValueError(f"input contains NaN in block {index}; fill them before prediction")
        return normalize(region, metadata["normalization"])

    if dims == 3:
        probs = _predict_region(model, read, origin, size, job.max_tile, job.batch_size, job.tta)
    else:  # a 2D net: each slice of the block on its own
        probs = np.stack(
            [
                _predict_region(
                    model,
                    lambda a, b, z=z: read((z, *a), (z + 1, *b))[0],
                    origin[1:],
                    size[1:],
                    job.max_tile,
                    job.batch_size,
                    job.tta,
                )
                for z in range(origin[0], origin[0] + size[0])
            ],
            axis=1,
        )
    target = zarr.open_array(job.target, mode="r+")
    target[(slice(None), *(slice(o, o + s) for o, s in zip(origin, size, strict=True)))] = _encode(
        probs, job.dtype
    )
    # The marker follows the complete chunk write: a restarted run skips exactly these blocks.
    (_done_dir(job.target) / ".".join(map(str, index))).touch()
    return index


def _encode(probs: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return np.rint(probs * 255).astype(np.uint8)
    return probs.astype(np.float16)


def _block_shape(
    shape: Sequence[int], dims: int, max_tile: Sequence[int], geometry: Geometry
) -> tuple[int, int, int]:
    """Output blocks: one tile each where the volume allows, split evenly, on the pooling grid."""
    block = [1] if dims == 2 else []
    for size, tile in zip(shape[3 - dims :], max_tile, strict=True):
        largest = geometry.tile_output(tile) // geometry.align * geometry.align
        count = math.ceil(size / largest)
        block.append(min(largest, math.ceil(size / count / geometry.align) * geometry.align))
    return tuple(block)  # type: ignore[return-value]


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
    device: str = "auto",
    scheduler: str = "threads",
    n_workers: int = 1,
    threads_per_worker: int | None = None,
    address: str | None = None,
    slurm: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict a volume (z, y, x) of any size into an OME-Zarr image (classes, z, y, x).

    The input is a TIFF, a Zarr array or an OME-Zarr image, read lazily
    (:func:`unetpipe.ngff.open_image`); the output's full-resolution level ``0`` gets the
    input's voxel size and a pyramid (:func:`unetpipe.ngff.write_image`).

    The volume is cut into output blocks on the pooling grid, one Zarr chunk each; a Dask task
    reads its block plus halo, runs its tiles through the model (loaded once per worker) and writes
    its own chunk, so memory is bounded by the blocks in flight. Output goes to
    ``<output>.partial`` and becomes level 0 of ``output`` when complete; a killed run restarted
    with the same model and parameters skips the blocks already written. ``dtype`` float16 stores
    probabilities, uint8 stores ``round(255 p)``. ``scheduler``: threads, local (a distributed
    LocalCluster), address (an existing scheduler) or slurm (a dask-jobqueue SLURMCluster,
    ``slurm`` its options). Returns counts and timings.
    """
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    started = time.perf_counter()
    source = open_image(input_zarr_array)
    model_path = str(Path(model_path).resolve())
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    # Loaded here to check it; the threads scheduler's workers then share this copy.
    model, metadata = _worker_model(model_path, device if scheduler == "threads" else "cpu")
    if "normalization" not in metadata:
        raise ValueError(f"{model_path} has no normalization metadata (mean/std); re-export it")
    dims = model.config["dims"]
    if source.ndim != 3:
        raise ValueError(f"input must be a (z, y, x) array, got shape {source.shape}")
    if 0 in source.shape:
        raise ValueError(f"input array is empty (shape {source.shape})")
    geometry = Geometry.of(model)
    max_tile = _max_tile(model, tile, batch_size, memory_gb)
    if block is None:
        block = _block_shape(source.shape, dims, max_tile, geometry)
    block = tuple(int(b) for b in block)
    if len(block) != 3 or (dims == 2 and block[0] != 1) or min(block) < 1:
        raise ValueError(f"block must be (z, y, x) with z = 1 for a 2D net, got {block}")
    if any(b % geometry.align for b in block[3 - dims :]):
        raise ValueError(f"block extents must be multiples of {geometry.align} (pooling grid)")

    output = Path(output_zarr_path)
    partial = output.with_name(output.name + ".partial")
    attrs = {
        "model": model_path,
        "model_sha256": sha256sum(model_path),
        "model_config": model.config,
        "normalization": metadata["normalization"],
        "input": {"path": source.path, "format": source.format, "shape": list(source.shape)},
        "input_attrs": source.attrs,
        "tile": list(max_tile),
        "block": list(block),
        "mirror": mirror,
        "tta": tta,
        "dtype": dtype,
        "scale": 1 / 255 if dtype == "uint8" else 1.0,
        "axes": ["c", "z", "y", "x"],
    }
    _open_partial(partial, attrs, model.config["n_classes"], source.shape, block, dtype)
    grid = [range(math.ceil(n / b)) for n, b in zip(source.shape, block, strict=True)]
    blocks = list(itertools.product(*grid))
    done = {tuple(int(i) for i in p.name.split(".")) for p in _done_dir(partial).iterdir()}
    todo = [index for index in blocks if index not in done]
    log.info(
        "predicting %s: %d blocks of %s (%d already done), tiles up to %s, scheduler %s",
        source.shape,
        len(blocks),
        block,
        len(blocks) - len(todo),
        max_tile,
        scheduler,
    )
    job = _Job(
        model_path, source, str(partial), block, max_tile, batch_size, mirror, tta, dtype, device
    )
    _compute(job, todo, scheduler, n_workers, threads_per_worker, address, slurm or {}, progress)
    missing = set(blocks) - {
        tuple(int(i) for i in p.name.split(".")) for p in _done_dir(partial).iterdir()
    }
    if missing:
        raise RuntimeError(f"{len(missing)} blocks were not written; rerun to resume")
    shutil.rmtree(_done_dir(partial))
    write_image(output, partial, source.space)
    seconds = time.perf_counter() - started
    log.info("wrote %s in %.1f s", output, seconds)
    return {"blocks": len(blocks), "computed": len(todo), "seconds": seconds, "block": block}


def _open_partial(
    partial: Path,
    attrs: dict[str, Any],
    classes: int,
    shape: Sequence[int],
    block: Sequence[int],
    dtype: str,
) -> None:
    """Reuse ``partial`` when it was made by the same model and parameters, else start afresh."""
    fingerprint = hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest()
    if partial.exists():
        metadata = partial / "zarr.json"
        previous = (
            json.loads(metadata.read_text())["attributes"].get("fingerprint")
            if metadata.is_file()
            else None
        )
        if previous == fingerprint and _done_dir(partial).is_dir():
            return
        shutil.rmtree(partial)
    array = zarr.create_array(
        str(partial),
        shape=(classes, *shape),
        chunks=(classes, *block),
        dtype=dtype,
        fill_value=0,
    )
    array.attrs.update({"unetpipe": "predict", **attrs, "fingerprint": fingerprint})
    _done_dir(partial).mkdir()


def _compute(
    job: _Job,
    todo: list[tuple[int, int, int]],
    scheduler: str,
    n_workers: int,
    threads_per_worker: int | None,
    address: str | None,
    slurm: dict[str, Any],
    progress: bool,
) -> None:
    import dask

    tasks = [dask.delayed(_predict_block, pure=False)(job, index) for index in todo]
    if not tasks:
        return
    if scheduler == "threads":
        if threads_per_worker:
            torch.set_num_threads(threads_per_worker)
        from dask.diagnostics import ProgressBar

        with ProgressBar() if progress else contextlib.nullcontext():
            dask.compute(*tasks, scheduler="threads", num_workers=n_workers)
        return
    from distributed import Client
    from distributed import progress as distributed_progress

    with _cluster(scheduler, n_workers, threads_per_worker, address, slurm) as target:
        with Client(target) as client:
            futures = client.compute(tasks)
            if progress:
                distributed_progress(futures)
            client.gather(futures)


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
        "queue": slurm.get("queue"),
        "account": slurm.get("account"),
        "cores": slurm.get("cores", 4),
        "processes": 1,
        "memory": slurm.get("memory", "16GB"),
        "walltime": slurm.get("walltime", "01:00:00"),
        "job_extra_directives": list(slurm.get("job_extra_directives", [])),
        "log_directory": slurm.get("log_directory"),
    }
    return {k: v for k, v in options.items() if v is not None}
