"""Probabilities to instances. The paper segments by the network's pixel classes alone; separating
touching cells is left to the weighted loss (Eq. 2), so instances are the connected components of
the thresholded cell probability, optionally split by a seeded watershed.

Slices are segmented in 2D. A slice is read whole even when its (y, x) plane spans several Zarr
chunks (memory: one slice), so labels agree across chunk borders by construction; the output keeps
the predictions' chunking and its labels are distinct over the whole stack.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import relabel_sequential, watershed

from unetpipe.ngff import ImageArray, label_image, open_image
from unetpipe.params import merge_params

log = logging.getLogger(__name__)

METHODS = ("components", "watershed")
RELIEFS = ("distance", "probability")
DEFAULTS = {
    "threshold": 0.5,
    "method": "components",
    "relief": "distance",
    "min_distance": 7,
    "min_size": 16,
}


def segment_slice(
    probability: np.ndarray,
    threshold: float = 0.5,
    method: str = "components",
    relief: str = "distance",
    min_distance: int = 7,
    min_size: int = 16,
) -> np.ndarray:
    """Instances (uint32, 1..n, 0 = background) of one cell-probability slice.

    ``components``: 4-connected components of ``probability > threshold``. ``watershed``: each
    component is split by a watershed from the maxima (at least ``min_distance`` apart) of its
    distance transform, flooding the negated distance or ``1 - probability`` (``relief``).
    Objects smaller than ``min_size`` pixels are removed.
    """
    if probability.ndim != 2:
        raise ValueError(f"segment_slice expects a (y, x) slice, got shape {probability.shape}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if relief not in RELIEFS:
        raise ValueError(f"relief must be one of {RELIEFS}, got {relief!r}")
    mask = probability > threshold
    labels = ndimage.label(mask)[0]
    if method == "watershed" and labels.any():
        distance = ndimage.distance_transform_edt(mask)
        peaks = peak_local_max(
            distance, min_distance=max(1, min_distance), labels=labels, exclude_border=False
        )
        seeds = np.zeros(mask.shape, bool)
        seeds[tuple(peaks.T)] = True
        markers = ndimage.label(seeds, structure=np.ones((3, 3)))[0]  # touching peaks: one seed
        height = -distance if relief == "distance" else 1.0 - probability
        labels = watershed(height, markers, mask=mask)
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    labels[small[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.uint32)


def cell_probability(predictions: zarr.Array | ImageArray, z: int) -> np.ndarray:
    """Slice ``z`` of channel 1 (cell) of a (classes, z, y, x) prediction, as float32 in [0, 1]
    (integer predictions are scaled by their dtype's maximum)."""
    prob = np.asarray(predictions[1, z])
    if np.issubdtype(prob.dtype, np.integer):
        return prob.astype(np.float32) / np.iinfo(prob.dtype).max
    return prob.astype(np.float32)


def segment_zarr(
    predictions: str | Path, output: str | Path, cfg: dict[str, Any] | None = None, threads: int = 1
) -> None:
    """Segment every slice of (classes, z, y, x) predictions (OME-Zarr, Zarr or ImageJ TIFF) into
    a (z, y, x) uint32 OME-Zarr label image of them (:func:`unetpipe.ngff.label_image`).

    Slices run in parallel (Dask, ``threads`` workers); a second pass adds per-slice offsets so
    that labels are distinct over the stack. ``cfg`` = the ``segment`` config section.
    """
    params = merge_params("segment", DEFAULTS, cfg)
    source = open_image(predictions, "czyx")
    if source.ndim != 4 or source.shape[0] < 2 or source.shape[1] == 0:
        raise ValueError(f"{predictions}: not (classes >= 2, z, y, x): {source.shape}")
    n_slices = source.shape[1]

    with label_image(output, source) as level0:
        target = zarr.create_array(
            str(level0),
            shape=source.shape[1:],
            chunks=(1, *source.chunks[2:]),  # one slice per chunk: parallel writes never share
            dtype=np.uint32,
            fill_value=0,
            attributes={"segment": params, "predictions": str(predictions)},
        )

        def label(z: int) -> int:
            labels = segment_slice(cell_probability(source, z), **params)
            target[z] = labels
            return int(labels.max())

        def shift(z: int, offset: int) -> None:
            labels = target[z]
            target[z] = np.where(labels > 0, labels + np.uint32(offset), 0)

        counts = dask.compute(
            *[dask.delayed(label)(z) for z in range(n_slices)],
            scheduler="threads",
            num_workers=threads,
        )
        offsets = np.cumsum((0, *counts[:-1]))
        if int(offsets[-1]) + counts[-1] >= 2**32:
            raise ValueError("more than 2^32 - 1 instances do not fit uint32 labels")
        dask.compute(
            *[dask.delayed(shift)(z, int(o)) for z, o in enumerate(offsets) if o > 0],
            scheduler="threads",
            num_workers=threads,
        )
    log.info("%s: %d instances in %d slices", output, int(sum(counts)), n_slices)
