"""The weights stage: Eq. 2's weight maps of a dataset's labels precomputed into its Zarr group
(rule weights, ``unetpipe weights``), slices in parallel processes. The map itself is
:func:`unetpipe.weights.weight_map`; this module is its edge to Zarr and the configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from unetpipe.io import STORE_EVERY_CHUNK, atomic_path, open_data
from unetpipe.sections import WeightsConfig
from unetpipe.weights import separate_instances, weight_map

log = logging.getLogger(__name__)


def _weights_of(
    labels: np.ndarray, known: np.ndarray | None, params: WeightsConfig, spacing: tuple
) -> np.ndarray:
    labels = separate_instances(labels, params.separation_gap)
    return weight_map(
        labels,
        params.w0,
        params.sigma,
        params.class_weights,
        tolerance=params.tolerance,
        spacing=spacing,
        known=known,
    )


def _write_block(
    data: str, target: str, start: int, stop: int, params: WeightsConfig, voxel: tuple
) -> None:
    """Weights of slices ``start:stop`` (whole z-chunks, so parallel writes never share a chunk)."""
    group = open_data(data)
    labels = np.asarray(group["labels"][start:stop])
    known = np.asarray(group["mask"][start:stop]) > 0 if "mask" in group else None
    if params.mode == "3d":
        weights = _weights_of(labels, known, params, voxel)
    else:
        weights = np.stack(
            [
                _weights_of(image, None if known is None else known[i], params, voxel[1:])
                for i, image in enumerate(labels)
            ]
        )
    zarr.open_array(target, mode="r+")[start:stop] = weights


def write_weights(
    data_zarr: str | Path,
    params: WeightsConfig | Mapping[str, Any] | None = None,
    *,
    threads: int = 1,
) -> None:
    """Write the ``weights`` array (Eq. 2 of ``labels``) into a dataset's Zarr group.

    float32, chunked like ``labels``, the parameters in its attributes. Slices (whole z-chunks) are
    computed in parallel by ``threads`` processes; ``params.mode == "3d"`` computes distances in
    3D with the group's ``voxel_size``. With ``separation_gap`` > 0 the map is that of
    ``separate_instances(labels, separation_gap)``. The array is written under a temporary name and
    renamed when complete; bad input (non-integer or negative labels, a shape unlike ``raw``'s)
    writes nothing.
    """
    params = WeightsConfig.from_mapping(params)
    group = open_data(data_zarr)
    if "labels" not in group:
        raise ValueError(f"{data_zarr} has no 'labels' array to compute weights from")
    labels = group["labels"]
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{data_zarr}/labels must be integer instances, got dtype {labels.dtype}")
    if labels.ndim != 3:
        raise ValueError(f"{data_zarr}/labels must be (z, y, x), got shape {labels.shape}")
    if "raw" in group and group["raw"].shape != labels.shape:
        raise ValueError(
            f"{data_zarr}: labels shape {labels.shape} differs from raw's {group['raw'].shape}"
        )
    voxel = tuple(float(v) for v in group.attrs.get("voxel_size", (1.0, 1.0, 1.0)))
    depth = labels.shape[0] if params.mode == "3d" else labels.chunks[0]
    blocks = [(z, min(z + depth, labels.shape[0])) for z in range(0, labels.shape[0], depth)]
    attrs = {
        **params.to_mapping(),
        "voxel_size": list(voxel),
        "ignored": "mask" in group,  # weight 0 where the group's mask says the truth is unknown
        "equation": "Ronneberger et al. 2015, Eq. 2",
    }
    if isinstance(params.class_weights, Mapping):
        attrs["class_weights"] = {str(k): v for k, v in params.class_weights.items()}
    with atomic_path(Path(data_zarr) / "weights") as tmp:
        zarr.create_array(
            tmp,
            shape=labels.shape,
            chunks=labels.chunks,
            dtype="float32",
            attributes=attrs,
            config=STORE_EVERY_CHUNK,
        )
        jobs = [(str(data_zarr), str(tmp), start, stop, params, voxel) for start, stop in blocks]
        if threads <= 1 or len(jobs) == 1:
            for job in jobs:
                _write_block(*job)
        else:
            with ProcessPoolExecutor(min(threads, len(jobs))) as pool:
                for future in [pool.submit(_write_block, *job) for job in jobs]:
                    future.result()
    log.info("wrote %s/weights (%d slices, %s)", data_zarr, labels.shape[0], params)
