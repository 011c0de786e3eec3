"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2), in memory and over Zarr volumes.

:func:`predict_image` tiles an in-memory image; :func:`predict_zarr` runs the same tiles block by
block over a Zarr volume with Dask (threads, a local cluster, a scheduler address or SLURM), writes
chunk-aligned output and resumes after being killed. Geometry and mirroring: :mod:`unetpipe.tiling`.
Because blocks and tiles start on the pooling grid, both equal one pass of the network over the
whole mirror-padded image.

By concern: :mod:`~unetpipe.predict.tiles` (an image in memory: tiles, TTA, the measured tile and
memory format), :mod:`~unetpipe.predict.plan` (blocks, tasks and the job of a volume),
:mod:`~unetpipe.predict.blocks` (reading, predicting and writing blocks; resuming a killed run),
:mod:`~unetpipe.predict.executors` (threads, Dask, SLURM; the model each worker loads once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import zarr

from unetpipe.affinities import channel_names
from unetpipe.io import check_disjoint, location, relative_to_output, sha256sum, writes_output
from unetpipe.model import UNet
from unetpipe.ngff import ImageArray, open_image, write_image
from unetpipe.precision import choose_memory_format, resolve_precision
from unetpipe.predict.blocks import (
    OUTPUT_DTYPES,
    check_run_settings,
    create_partial,
    input_digest,
    marker_store,
    predict_batch,
    recorded_attributes,
    same_run,
)
from unetpipe.predict.executors import (
    SCHEDULERS,
    compute,
    resolve_device,
    slurm_cluster_options,
    worker_model,
)
from unetpipe.predict.plan import BlockPlan, Job, block_shape, checked_block
from unetpipe.predict.tiles import (
    DEFAULT_MEMORY_GB,
    Pass,
    Views,
    check_tta,
    largest_tile,
    pass_memory_format,
    pass_tile,
    predict_image,
)
from unetpipe.sections import PredictConfig
from unetpipe.tiling import Geometry, plan_axis

__all__ = [
    "DEFAULT_MEMORY_GB",
    "OUTPUT_DTYPES",
    "SCHEDULERS",
    "pass_memory_format",
    "pass_tile",
    "predict_image",
    "predict_stage",
    "predict_zarr",
    "slurm_cluster_options",
]

log = logging.getLogger(__name__)


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
    check_run_settings(dtype, scheduler, mirror, device, n_workers, threads_per_worker, slurm)
    # The device of the tasks as seen from here (other schedulers' workers may differ).
    here = device if scheduler == "threads" or device != "auto" else "cpu"
    precision = resolve_precision(precision, resolve_device(here))
    started = time.perf_counter()
    source = open_image(input_zarr_array)
    model_path = str(Path(model_path).resolve())
    output = Path(output_zarr_path)
    partial = output.with_name(output.name + ".partial")
    # Loaded here to check it; the threads scheduler's workers then share this copy.
    model, metadata = _checked_inputs(
        model_path, source, partial, device if scheduler == "threads" else "cpu", tta
    )
    dims = model.config["dims"]
    geometry = Geometry.of(model)
    given = checked_block(block, geometry)
    # The output region of one block at most, and the tile covering it within the budget.
    region = tuple(
        min(b, n)
        for b, n in zip((given or source.shape)[3 - dims :], source.shape[3 - dims :], strict=True)
    )
    cap = largest_tile(model, tile, batch_size, memory_gb, region)
    covering = tuple(
        plan_axis(n, c, a).tile for n, c, a in zip(region, cap, geometry.axes, strict=True)
    )
    described = _output_attributes(
        model_path, model, metadata, source, output, mirror, tta, dtype, precision
    )

    def settings(max_tile: tuple[int, ...]) -> tuple[BlockPlan, dict[str, Any], str]:
        """The blocks, the output's attributes and their fingerprint for a largest tile."""
        blocks = given or block_shape(source.shape, dims, max_tile, geometry)
        attrs = {**described, "tile": list(max_tile), "block": list(blocks)}
        fingerprint = hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest()
        return BlockPlan.of(source.shape, blocks), attrs, fingerprint

    # A resumed run keeps the tile and the memory format its partial output recorded; otherwise
    # the format is measured, then (tile None) the tile in that format.
    recorded = recorded_attributes(partial)
    max_tile = cap if tile is not None else tuple(recorded.get("tile", ())) or None
    if max_tile is not None and any(t > c for t, c in zip(max_tile, cap, strict=False)):
        max_tile = None  # recorded under a larger memory budget
    how_tile = "configured" if tile is not None else "recorded"
    resumed = False
    if max_tile is not None:
        plan, attrs, fingerprint = settings(max_tile)
        resumed = same_run(partial, fingerprint, plan)
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
        plan, attrs, fingerprint = settings(max_tile)
        how_tile = "measured on this machine" if measured else "memory budget"
    job = Job(
        model_path=model_path,
        source=source,
        target=str(partial),
        geometry=geometry,
        plan=plan,
        max_tile=max_tile,
        mirror=mirror,
        views=Views.of(model.config, tta, source.shape[3 - dims :]),
        dtype=dtype,
        device=device,
        run=Pass(batch_size, precision, fmt),
    )
    _start_output(job, attrs, fingerprint, model.config["n_classes"], resumed, how == "configured")
    log.info(
        "predicting %s: %d blocks of %s in tasks of %s blocks, tiles up to %s (%s), %s, memory "
        "format %s (%s), scheduler %s%s",
        source.shape,
        plan.blocks,
        plan.block,
        plan.batch,
        max_tile,
        how_tile,
        precision,
        fmt,
        how,
        scheduler,
        "; resuming: finished blocks are kept where their input is unchanged" if resumed else "",
    )
    totals = compute(
        predict_batch, job, scheduler, n_workers, threads_per_worker, address, slurm, progress
    )
    seconds = _finish(job, output, totals, resumed, started)
    return {**totals, "seconds": seconds, "block": plan.block, "batch": plan.batch}


def predict_stage(
    model_path: str | Path,
    image: Any,
    output: str | Path,
    cfg: PredictConfig | Mapping[str, Any],
    threads: int | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """The predict stage, as rule ``predict`` and ``unetpipe predict`` run it: :func:`predict_zarr`
    of ``image`` with the predict section ``cfg`` (possibly partial; ``arrays``, the workflow's
    inputs, aside; validated here, once); the threads scheduler's tasks run on ``threads`` torch
    threads unless ``threads_per_worker`` is set (None: torch's choice)."""
    settings = PredictConfig.from_mapping(cfg)
    options = settings.to_mapping()
    del options["arrays"]
    if settings.scheduler == "threads" and settings.threads_per_worker is None:
        options["threads_per_worker"] = threads
    return predict_zarr(model_path, image, output, **options, overwrite=overwrite)


def _checked_inputs(
    model_path: str, source: ImageArray, partial: Path, device: str, tta: bool
) -> tuple[UNet, dict[str, Any]]:
    """The model (loaded on ``device``) and its metadata, once the model file, the partial output
    beside the input, the model's normalisation, TTA and the volume's shape are checked."""
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    check_disjoint(partial, location(source), model_path)
    model, metadata = worker_model(model_path, device)
    if "normalization" not in metadata:
        raise ValueError(f"{model_path} has no normalization metadata (mean/std); re-export it")
    check_tta(model, tta)
    if source.ndim != 3:
        raise ValueError(f"input must be a (z, y, x) array, got shape {source.shape}")
    if 0 in source.shape:
        raise ValueError(f"input array is empty (shape {source.shape})")
    return model, metadata


def _output_attributes(
    model_path: str,
    model: UNet,
    metadata: dict[str, Any],
    source: ImageArray,
    output: Path,
    mirror: str,
    tta: bool,
    dtype: str,
    precision: str,
) -> dict[str, Any]:
    """The output's attributes, what it was computed from and how; ``tile`` and ``block`` are
    left to the run's choice (None here, in their place)."""
    attrs = {
        "model": relative_to_output(model_path, output),
        "model_sha256": sha256sum(model_path),
        "model_config": model.config,
        "normalization": metadata["normalization"],
        "input": {
            "path": relative_to_output(source.path, output),
            "format": source.format,
            "shape": list(source.shape),
        },
        "input_attrs": source.attrs,
        "tile": None,
        "block": None,
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
    return attrs


def _start_output(
    job: Job,
    attrs: dict[str, Any],
    fingerprint: str,
    classes: int,
    resumed: bool,
    format_configured: bool,
) -> None:
    """A new partial output (with the memory format and fingerprint), or a resumed one with the
    memory format of this run when configured (the last to write blocks); then the digest of the
    input as read, for evaluate to match against a dataset: outside the fingerprint, so that a
    resumed run still keeps each block whose own input is unchanged."""
    partial = Path(job.target)
    if not resumed:
        attrs = {**attrs, "memory_format": job.run.memory_format, "fingerprint": fingerprint}
        create_partial(partial, attrs, classes, job)
    elif format_configured:
        zarr.open_array(str(partial), mode="r+").attrs["memory_format"] = job.run.memory_format
    zarr.open_array(str(partial), mode="r+").attrs["input_sha256"] = input_digest(job.source)


def _finish(job: Job, output: Path, totals: dict[str, Any], resumed: bool, started: float) -> float:
    """Check that every block was written, log what a resumed run kept, publish the partial
    output as level 0 of the OME-Zarr ``output`` and log where the time went; the seconds since
    ``started``."""
    n_blocks = job.plan.blocks
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
    shutil.rmtree(marker_store(job.target))
    write_image(output, Path(job.target), job.source.space)
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
    return seconds
