"""Blocks of a volume's prediction and resuming them: a task reads each block with its halo
(checked and hashed), predicts and writes it as one output chunk; the partial output, its marker
store and the checks that decide whether a killed run resumes.

One marker store, a uint64 Zarr array with an entry per block and a chunk per batch, records the
digest of the input each finished block was computed from: a restarted run keeps a finished block
only when its input still has that digest.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import shutil
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import zarr

from unetpipe.config import choices
from unetpipe.intensity import normalize
from unetpipe.io import PROVENANCE, STORE_EVERY_CHUNK, location, refuse_foreign, stored_digest
from unetpipe.model import UNet
from unetpipe.predict.executors import SCHEDULERS, SLURM_KEYS, worker_id, worker_model
from unetpipe.predict.plan import BlockPlan, Job
from unetpipe.predict.tiles import Region, plan_region, predict_region
from unetpipe.tiling import MIRROR_MODES, read_mirrored

if TYPE_CHECKING:
    from unetpipe.ngff import ImageArray

OUTPUT_DTYPES = choices("predict", "dtype")


def marker_store(target: str | Path) -> Path:
    """The marker store of a partial output: input digest per block, 0 = not written."""
    return Path(target) / ".done"


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


def _read_block(
    job: Job, index: Sequence[int], normalization: dict[str, float]
) -> tuple[np.ndarray, Region, int, float]:
    """CPU side before the network: the block's input box (block + halo, mirrored at the
    border) read once, checked, hashed and normalised. Returns (data, region, digest, seconds)."""
    started = time.perf_counter()
    origin, size = job.plan.box(index)
    lead = 3 - job.geometry.dims  # a 2D net: the block's z range, each slice on its own
    region = plan_region(job.geometry, origin[lead:], size[lead:], job.max_tile, job.views)
    start = (*origin[:lead], *region.start)
    stop = (*(o + s for o, s in zip(origin[:lead], size[:lead], strict=True)), *region.stop)
    source = _CheckedSource(job.source)
    data = normalize(read_mirrored(source, start, stop, job.mirror), normalization)
    return data, region, source.digest(), time.perf_counter() - started


def _predict_block(model: UNet, job: Job, data: np.ndarray, region: Region) -> np.ndarray:
    """The network over one block's input: (classes, z, y, x) probabilities, float32."""
    if job.geometry.dims == 3:
        return predict_region(model, data, region, job.run)
    return np.stack([predict_region(model, plane, region, job.run) for plane in data], 1)


def _encode(probs: np.ndarray, dtype: str) -> np.ndarray:
    """float16, or uint8 ``round(255 p)`` (half to even, as np.rint); cast by torch, which is
    vectorised where numpy's float16 cast is not (18x faster here)."""
    values = torch.from_numpy(probs)
    if dtype == "uint8":
        return torch.round(values * 255).to(torch.uint8).numpy()
    return values.to(torch.float16).numpy()


def predict_batch(job: Job, batch: tuple[int, int, int]) -> dict[str, Any]:
    """One task: the blocks of ``batch``, in a pipeline where reading the next block and writing
    the previous one overlap the network's work on the current one. A block finished earlier is
    kept when its input digest is unchanged; the marker of a block follows its complete write."""
    started = time.perf_counter()
    model, metadata = worker_model(job.model_path, job.device, job.run.memory_format)
    target = zarr.open_array(job.target, mode="r+")
    markers = zarr.open_array(str(marker_store(job.target)), mode="r+")
    span = tuple(
        slice(i * b, min((i + 1) * b, g))
        for i, b, g in zip(batch, job.plan.batch, job.plan.grid, strict=True)
    )
    previous = markers[span]
    current = previous.copy()
    indices = list(itertools.product(*(range(s.start, s.stop) for s in span)))
    stats = {"blocks": len(indices), "computed": 0, "reused": 0, "stale": 0}
    seconds = {"read": 0.0, "compute": 0.0, "write": 0.0}

    def write(index: Sequence[int], local: tuple[int, ...], probs: np.ndarray, digest: int) -> None:
        begun = time.perf_counter()
        origin, size = job.plan.box(index)
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
        "worker": worker_id(),
    }


def input_digest(source: ImageArray) -> str | None:
    """sha256 of the input as stored (:func:`unetpipe.io.stored_digest`: a TIFF's bytes, a Zarr
    array's metadata and chunks); None for an array that is not on the local file system."""
    path = Path(source.path)
    return stored_digest(path) if path.exists() else None


def check_run_settings(
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


def create_partial(partial: Path, attrs: dict[str, Any], classes: int, job: Job) -> None:
    """Start afresh (a partial output of other parameters, never a folder unetpipe did not
    write, is removed): the output array with ``attrs`` and its marker store (one chunk per
    batch)."""
    if partial.exists():
        refuse_foreign(partial)
        shutil.rmtree(partial)
    zarr.create_array(
        str(partial),
        shape=(classes, *job.plan.shape),
        chunks=(classes, *job.plan.block),
        dtype=job.dtype,
        fill_value=0,
        attributes={PROVENANCE: "predict", **attrs},  # marked from its first byte
        config=STORE_EVERY_CHUNK,
    )
    zarr.create_array(
        str(marker_store(partial)),
        shape=job.plan.grid,
        chunks=job.plan.batch,
        dtype="uint64",
        fill_value=0,
        compressors=None,
    )


def same_run(partial: Path, fingerprint: str, plan: BlockPlan) -> bool:
    """Whether ``partial`` was made by the same model and parameters (resumable)."""
    metadata = partial / "zarr.json"
    if not (metadata.is_file() and (marker_store(partial) / "zarr.json").is_file()):
        return False
    if json.loads(metadata.read_text())["attributes"].get("fingerprint") != fingerprint:
        return False
    markers = zarr.open_array(str(marker_store(partial)), mode="r")
    return markers.shape == plan.grid and markers.chunks == plan.batch


def recorded_attributes(partial: Path) -> dict[str, Any]:
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
