"""Probabilities to instances. The paper segments by the network's pixel classes alone; separating
touching cells is left to the weighted loss (Eq. 2), so instances are the connected components of
the thresholded cell probability (``components``), optionally split by a seeded watershed
(``watershed``). Beyond the paper, ``agglomerate`` is the field's standard for a boundary map: a
watershed into supervoxels merged by mean boundary probability (:mod:`unetpipe.agglomerate`).
``mutex_watershed`` partitions an affinity map (``model.target: affinities``) by the Mutex
Watershed (:mod:`unetpipe.mutex`, Wolf et al. 2018): slice by slice (2D offsets) or a whole volume
(3D offsets, in memory). The other methods read an affinity map's cell map, the mean of its
nearest-neighbour channels (:func:`cell_region`).

Post-processing parameters can be fixed on training slices (:func:`tune_segmentation`: the best
instance V_rand, CTC SEG, DET or OP_CSB over a grid), never on the slices that are scored.

``components`` and ``watershed`` segment each slice in 2D, read whole even when its (y, x) plane
spans several Zarr chunks, so labels agree across chunk borders by construction. ``agglomerate``
runs on blocks (the predictions' chunks, or ``block``) with the seams joined exactly: its result,
labels included, is that of the whole volume in one piece. Output labels are distinct over the
stack.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import relabel_sequential, watershed
from tqdm import tqdm

from unetpipe import agglomerate as agg
from unetpipe import metrics
from unetpipe.config import check_segment, choices, defaults
from unetpipe.io import STORE_EVERY_CHUNK, open_data, relative_to_output, writes_output
from unetpipe.mutex import (
    MAX_3D_VOXELS,
    blockwise,
    fill_unlabelled,
    mutex_watershed,
    mutex_watershed_blocks,
    nearest_mean,
    plan_blocks,
)
from unetpipe.ngff import (
    ImageArray,
    affinity_offsets,
    affinity_slice,
    cell_probability,
    cell_region,
    label_image,
    labelled_image,
    open_image,
    require_grid,
    scaled_probability,
)
from unetpipe.sections import SegmentConfig, TuneConfig
from unetpipe.splits import Split, resolve, tuning

log = logging.getLogger(__name__)

METHODS = choices("segment", "method")
RELIEFS = choices("segment", "relief")
MODES = choices("segment", "mode")
SMALL = choices("segment", "small_objects")
MEASURES = {  # segment.tune.measure: the scores, from a contingency table of (truth, labels)
    "v_rand": metrics.v_rand_of_table,
    "seg": metrics.seg_score_of_table,
    "det": metrics.det_score_of_table,
    "op_csb": metrics.op_csb_of_table,
}
DEFAULTS = defaults("segment")
"""The ``segment`` config section's defaults (from the schema, unetpipe/config.schema.yaml)."""
GRIDS = {  # the tuner's default grids, per method (every value a list)
    "components": {"threshold": [0.3, 0.4, 0.5, 0.6, 0.7], "min_size": [0, 16, 64]},
    "watershed": {"threshold": [0.4, 0.5, 0.6], "min_distance": [5, 10], "min_size": [0, 16, 64]},
    "agglomerate": {
        "sigma": [1.0, 2.0],
        "merge_threshold": np.round(np.arange(0.3, 0.81, 0.05), 2).tolist(),
        "min_size": [0, 64],
    },
    "mutex_watershed": {
        "bias": np.round(np.arange(-0.3, 0.31, 0.1), 2).tolist(),
        "min_size": [16, 64, 256],
    },
}
_AFTER = ("merge_threshold", "min_size", "small_objects")  # applied after the (costly) labelling
_RUN = ("block", "tune")  # not parameters of the labels


def _settings(params: SegmentConfig) -> agg.Settings:
    return agg.Settings(
        mode=params.mode,
        relief=params.relief,
        sigma=float(params.sigma),
        max_distance=int(params.max_distance),
        threshold=float(params.threshold),
        mask=bool(params.mask),
    )


def _check(params: SegmentConfig) -> None:
    if params.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {params.method!r}")
    if params.relief not in RELIEFS:
        raise ValueError(f"relief must be one of {RELIEFS}, got {params.relief!r}")
    if params.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {params.mode!r}")
    if int(params.stride) < 1:
        raise ValueError(f"segment.stride must be at least 1, got {params.stride}")
    if params.small_objects not in SMALL:
        raise ValueError(f"small_objects must be one of {SMALL}, got {params.small_objects!r}")
    check_segment(params.to_mapping())
    if params.method == "agglomerate":
        _settings(params)  # checks mode, sigma, max_distance


def _slice_labels(probability: np.ndarray, params: SegmentConfig) -> np.ndarray:
    """Components, or components split by a watershed, of one slice (no size filter)."""
    mask = probability > params.threshold
    labels = metrics.components(mask)[0]
    if params.method == "watershed" and labels.any():
        distance = ndimage.distance_transform_edt(mask)
        peaks = peak_local_max(
            distance,
            min_distance=max(1, int(params.min_distance)),
            labels=labels,
            exclude_border=False,
        )
        seeds = np.zeros(mask.shape, bool)
        seeds[tuple(peaks.T)] = True
        markers = ndimage.label(seeds, structure=np.ones((3, 3)))[0]  # touching peaks: one seed
        height = -distance if params.relief == "distance" else 1.0 - probability
        labels = watershed(height, markers, mask=mask)
    return labels


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def _hierarchy(
    probability: np.ndarray, params: SegmentConfig, stop: float
) -> tuple[agg.Hierarchy, np.ndarray]:
    """The agglomeration hierarchy of an in-memory (z, y, x) volume, in one block, and its
    supervoxel image."""
    store = np.zeros(probability.shape, np.uint32)
    hierarchy, write = agg.build(
        lambda lo, hi: probability[tuple(map(slice, lo, hi))],
        store,
        probability.shape,
        _settings(params),
        stop,
    )
    write(np.arange(hierarchy.count + 1, dtype=np.uint32))
    return hierarchy, store


def _table(hierarchy: agg.Hierarchy, params: SegmentConfig, stop: float) -> np.ndarray:
    return hierarchy.table(stop, int(params.min_size), params.small_objects)


def segment_volume(
    probability: np.ndarray, offsets: Sequence[Sequence[int]] | None = None, **params: Any
) -> np.ndarray:
    """Instances (uint32, 1..n, 0 = background) of a (z, y, x) cell-probability stack (or one
    (y, x) slice), labels distinct over the stack; ``params`` = :data:`DEFAULTS` keys.
    ``mutex_watershed``: ``probability`` is an affinity map (K, z, y, x) (or (K, y, x)) of
    ``offsets``, partitioned by :func:`unetpipe.mutex.mutex_watershed` with ``bias`` and
    ``stride`` per slice (``mode`` 2d) or as one volume (3d, 3D offsets); with ``mask``, pixels
    whose nearest-neighbour mean is at most ``threshold`` are background.

    ``components``: 4-connected components of ``probability > threshold`` in each slice.
    ``watershed``: each component split by a watershed from the maxima (at least ``min_distance``
    apart) of its distance transform, flooding the negated distance or ``1 - probability``
    (``relief``). ``agglomerate``: :mod:`unetpipe.agglomerate` stopped at ``merge_threshold``
    (slice by slice for ``mode`` 2d, in 3D for 3d; ``mask``: pixels with probability at most
    ``threshold`` are background). Objects smaller than ``min_size`` pixels are removed, or for
    ``agglomerate`` with ``small_objects`` merge joined to their neighbour of lowest mean boundary
    probability (:meth:`unetpipe.agglomerate.Hierarchy.table`).
    """
    config = SegmentConfig.from_mapping(params)
    _check(config)
    return _segment(probability, offsets, config)


def _segment(
    probability: np.ndarray, offsets: Sequence[Sequence[int]] | None, params: SegmentConfig
) -> np.ndarray:
    """:func:`segment_volume` with ``params`` a validated and checked segment section."""
    prob = np.asarray(probability, dtype=np.float32)
    if params.method == "mutex_watershed":
        volume = _affinity_volume(prob, offsets, params.mode)
        labels = _mutex_labels(volume, offsets, params).astype(np.uint32)
        return labels[0] if prob.ndim == 3 else labels
    if prob.ndim not in (2, 3):
        raise ValueError(f"expected a (y, x) slice or (z, y, x) stack, got shape {prob.shape}")
    volume = prob[None] if prob.ndim == 2 else prob
    if params.method == "agglomerate":
        stop = float(params.merge_threshold)
        hierarchy, supervoxels = _hierarchy(volume, params, stop)
        labels = _table(hierarchy, params, stop)[supervoxels]
    else:
        labels = _stack_labels(volume, params)
        labels = relabel_sequential(_drop_small(labels, int(params.min_size)))[0]
    labels = labels.astype(np.uint32)
    return labels[0] if prob.ndim == 2 else labels


def _affinity_volume(
    affinities: np.ndarray, offsets: Sequence[Sequence[int]] | None, mode: str
) -> np.ndarray:
    """A (K, y, x) or (K, z, y, x) affinity map as (K, z, y, x), checked against its offsets."""
    if offsets is None:
        raise ValueError(
            "method mutex_watershed needs an affinity map and its offsets: predictions of a "
            "network trained with model.target affinities"
        )
    dims = len(offsets[0])
    if mode == "3d" and dims != 3:
        raise ValueError(f"mode 3d needs 3D offsets (a 3D affinity network), got {offsets}")
    if mode == "2d" and dims != 2:
        raise ValueError(f"mode 2d needs 2D (y, x) offsets, got {offsets}; use mode 3d")
    if affinities.ndim not in (3, 4) or affinities.shape[0] != len(offsets):
        raise ValueError(
            f"expected a ({len(offsets)} offsets, [z,] y, x) affinity map, got {affinities.shape}"
        )
    return affinities[:, None] if affinities.ndim == 3 else affinities


def _mask_threshold(params: SegmentConfig) -> float | None:
    return float(params.threshold) if params.mask else None


def _mutex_labels(
    volume: np.ndarray, offsets: Sequence[Sequence[int]], params: SegmentConfig
) -> np.ndarray:
    """The Mutex Watershed (:mod:`unetpipe.mutex`) of a (K, z, y, x) affinity map: of each slice
    (mode 2d), of the volume (3d) or of the volume by overlapping blocks (3d, ``mutex_block``);
    objects under ``min_size`` dropped; without ``mask`` every pixel labelled
    (:func:`unetpipe.mutex.fill_unlabelled`). Labels 1..n over the stack."""
    bias, stride, threshold = float(params.bias), int(params.stride), _mask_threshold(params)
    min_size = int(params.min_size)
    if params.mode == "3d" and params.mutex_block:
        block = params.mutex_block
        return mutex_watershed_blocks(volume, offsets, block, bias, stride, threshold, min_size)

    def one(affinities: np.ndarray) -> np.ndarray:
        mask = None if threshold is None else nearest_mean(affinities, offsets) > threshold
        labels = mutex_watershed(affinities, offsets, bias, stride, mask)
        labels = relabel_sequential(_drop_small(labels, min_size))[0]
        return labels if threshold is not None else fill_unlabelled(labels, affinities, offsets)

    if params.mode == "3d":
        return one(volume)
    return _per_slice(volume.shape[1:], (one(volume[:, z]) for z in range(volume.shape[1])))


def _stack_labels(volume: np.ndarray, params: SegmentConfig) -> np.ndarray:
    """:func:`_slice_labels` of every slice, labels distinct over the stack."""
    if params.method == "components":
        return metrics.components(volume > params.threshold)
    return _per_slice(volume.shape, (_slice_labels(plane, params) for plane in volume))


def _per_slice(shape: Sequence[int], slices: Iterable[np.ndarray]) -> np.ndarray:
    """The (z, y, x) ``shape`` stack of each slice's labels, made distinct over the stack (slice
    z's numbered after z - 1's)."""
    out = np.zeros(tuple(shape), np.int64)
    offset = 0
    for z, labels in enumerate(slices):
        out[z] = np.where(labels > 0, labels + offset, 0)
        offset += int(labels.max())
    return out


def segment_slice(
    probability: np.ndarray,
    threshold: float = 0.5,
    method: str = "components",
    relief: str = "distance",
    min_distance: int = 7,
    min_size: int = 16,
    **agglomeration: Any,
) -> np.ndarray:
    """Instances (uint32, 1..n, 0 = background) of one cell-probability slice: see
    :func:`segment_volume` (``agglomeration``: its ``sigma``, ``merge_threshold``, ``mask`` ...)."""
    if probability.ndim != 2:
        raise ValueError(f"segment_slice expects a (y, x) slice, got shape {probability.shape}")
    return segment_volume(
        probability,
        threshold=threshold,
        method=method,
        relief=relief,
        min_distance=min_distance,
        min_size=min_size,
        **agglomeration,
    )


def score(
    labels: np.ndarray,
    truth: np.ndarray,
    measure: str,
    mode: str = "2d",
    known: np.ndarray | None = None,
) -> float:
    """Instance score of a (z, y, x) labelling: ``v_rand`` (instance V_rand, no thinning), ``seg``
    (CTC SEG), ``det`` (CTC DET) or ``op_csb`` (their mean), slices scored separately as
    :func:`unetpipe.evaluate.score_instances` does (``mode`` 2d), or the volume as one (3d).
    ``known``: where the truth is known (None: everywhere); other pixels are scored in neither,
    as :func:`unetpipe.evaluate.evaluate_run` does."""
    labels = metrics.slice_unique(labels) if mode == "2d" else labels
    return _Scorer(truth, measure, mode, known).entries(labels)(None)


class _Scorer:
    """:func:`score` against one truth of many relabellings ``table[labels]`` of a labelling,
    from their contingency table (computed once per labelling)."""

    def __init__(
        self, truth: np.ndarray, measure: str, mode: str, known: np.ndarray | None = None
    ) -> None:
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {list(MEASURES)}, got {measure!r}")
        if known is not None and np.shape(known) != np.shape(truth):
            raise ValueError(f"known {np.shape(known)} and truth {np.shape(truth)} differ")
        self.known = None if known is None else np.asarray(known, bool)
        truth = truth if self.known is None else np.where(self.known, truth, 0)
        self.truth = metrics.slice_unique(truth) if mode == "2d" else truth
        self.function = MEASURES[measure]

    def entries(self, labels: np.ndarray) -> Any:
        """The scores of relabellings of ``labels`` (ids at most its size, objects within one
        slice each in 2d mode): a function of the table (``None``: ``labels`` as they are)."""
        labels = labels if self.known is None else np.where(self.known, labels, 0)
        i, j, n = metrics.contingency(self.truth, labels)

        def scored(table: np.ndarray | None) -> float:
            if table is None:
                return self.function(i, j, n)
            merged = table[j].astype(np.int64)
            key, inverse = np.unique(i * (int(merged.max()) + 1) + merged, return_inverse=True)
            base = int(merged.max()) + 1
            return self.function(key // base, key % base, np.bincount(inverse, weights=n))

        return scored


def tune_segmentation(
    probability: np.ndarray,
    truth: np.ndarray,
    cfg: SegmentConfig | Mapping[str, Any] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    measure: str = "v_rand",
    known: np.ndarray | None = None,
    offsets: Sequence[Sequence[int]] | None = None,
    threads: int = 1,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Post-processing fixed on training slices: every combination of ``grid`` (parameter ->
    values; empty or None: the method's :data:`GRIDS`) over the ``cfg`` segment
    parameters, scored by :func:`score` on ``probability`` (z, y, x; ``mutex_watershed``: the
    (K, z, y, x) affinities of ``offsets``, its ``bias`` tuned) against ``truth`` where the
    truth is ``known`` (None: everywhere); the first best wins. Returns the chosen parameters and
    the table of scores (one row per combination). Only the given arrays are read: pass the
    training slices, never the scored ones.

    Costly steps run once per combination of the other parameters: ``min_size`` (and for
    ``agglomerate`` ``merge_threshold``, from one hierarchy up to the largest) are applied after
    (``mutex_watershed``: with a mask only; without, dropped pixels are flooded by the others).
    The combinations of the costly parameters run on ``threads`` threads (numpy and scipy release
    the GIL: DIC-HeLa's 84 tuning frames 77 s on 1 thread, 42 s on 2), in order, so that the table
    is the same; a thread pool rather than :func:`_dask_runner`, for a progress bar per
    combination.
    """
    config = SegmentConfig.from_mapping(cfg)
    _check(config)
    base = {k: v for k, v in config.to_mapping().items() if k not in _RUN}
    method = config.method
    grid = dict(grid or GRIDS[method])
    unknown = set(grid) - set(base)
    if unknown:
        raise ValueError(f"unknown segment parameters {sorted(unknown)} in the tuning grid")
    if {"method", "mode"} & set(grid):
        raise ValueError("the tuning grid cannot vary method or mode: tune each on its own")
    if any(len(v) == 0 for v in grid.values()):
        raise ValueError("every parameter of the tuning grid needs at least one value")
    prob = np.asarray(probability, dtype=np.float32)
    truth = np.asarray(truth)
    if method == "mutex_watershed":
        prob = _affinity_volume(prob, offsets, config.mode)
    spatial = prob.shape[1:] if method == "mutex_watershed" else prob.shape
    if len(spatial) != 3 or spatial != truth.shape:
        raise ValueError(f"probability {prob.shape} and truth {truth.shape}: need equal (z, y, x)")
    late = _AFTER
    if method == "mutex_watershed" and not _drops_only(config, grid):
        late = ()  # it fills the pixels of dropped objects: min_size decides the labelling
    before = [k for k in grid if k not in late]
    after = [k for k in late if k in grid]
    scorer = _Scorer(truth, measure, config.mode, known)

    def combination(values: tuple[Any, ...]) -> list[dict[str, Any]]:
        """The rows of one combination of the costly parameters: one labelling, scored under
        every combination of the parameters applied after it."""
        params = dataclasses.replace(config, **dict(zip(before, values, strict=True)))
        _check(params)
        if method == "agglomerate":
            stop = float(max(grid.get("merge_threshold", [params.merge_threshold])))
            hierarchy, labels = _hierarchy(prob, params, stop)
        else:
            if method == "mutex_watershed":
                late_size = "min_size" in after
                unsized = dataclasses.replace(params, min_size=0) if late_size else params
                labels = _mutex_labels(prob, offsets, unsized)
            else:
                labels = _stack_labels(prob, params)
            sizes = np.bincount(labels.ravel())
        scores = scorer.entries(labels)
        rows = []
        for applied in itertools.product(*(grid[k] for k in after)):
            chosen = dataclasses.replace(params, **dict(zip(after, applied, strict=True)))
            _check(chosen)
            if method == "agglomerate":
                table = _table(hierarchy, chosen, float(chosen.merge_threshold))
            else:
                table = np.where(sizes >= int(chosen.min_size), np.arange(sizes.size), 0)
                table[0] = 0
            row = {k: getattr(chosen, k) for k in grid}
            rows.append(row | {measure: scores(table)})
        return rows

    combinations = list(itertools.product(*(grid[k] for k in before)))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        done = tqdm(
            pool.map(combination, combinations),
            total=len(combinations),
            desc=f"tuning {', '.join(before) or 'segment parameters'}",
            unit="combination",
        )
        rows = [row for rows_of_one in done for row in rows_of_one]
    best = max(range(len(rows)), key=lambda i: (rows[i][measure], -i))
    return base | {k: rows[best][k] for k in grid}, rows


def _drops_only(config: SegmentConfig, grid: Mapping[str, Sequence[Any]]) -> bool:
    """Whether the Mutex Watershed's ``min_size`` only drops objects to background, so that the
    tuner can apply it after one labelling: with a mask, on the whole slice or volume (not by
    ``mutex_block``), for every combination of ``grid``."""
    masks = grid.get("mask", [config.mask])
    blocks = grid.get("mutex_block", [config.mutex_block])
    return all(masks) and not any(blocks)


def _open_predictions(path: str | Path) -> ImageArray:
    source = open_image(path, "czyx")
    least = 1 if affinity_offsets(source) is not None else 2
    if source.ndim != 4 or source.shape[0] < least or source.shape[1] == 0:
        raise ValueError(f"{path}: not (classes >= {least}, z, y, x): {source.shape}")
    return source


def tune_on_slices(
    predictions: Any,
    truth: Any,
    slices: Sequence[int],
    params: SegmentConfig | Mapping[str, Any],
    tune: TuneConfig | Mapping[str, Any],
    known: Any = None,
    threads: int = 1,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """:func:`tune_segmentation` on slices ``slices`` of a (classes, z, y, x) prediction array and
    a (z, y, x) labels array, scored where the (z, y, x) array ``known`` is nonzero (None:
    everywhere; a dataset group's ``mask``); nothing else of them is read, on ``threads`` threads.
    In 3d mode the slices must be consecutive (one sub-volume)."""
    params, tune = SegmentConfig.from_mapping(params), TuneConfig.from_mapping(tune)
    slices = [int(z) for z in slices]
    if not slices:
        raise ValueError("segment.tune needs training slices: give at least one")
    if params.mode == "3d" and slices != list(range(slices[0], slices[0] + len(slices))):
        raise ValueError(
            f"mode 3d tunes on one sub-volume: the slices {slices} are not consecutive"
        )
    offsets = None
    if params.method == "mutex_watershed":
        offsets = affinity_offsets(predictions)
    prob, labels, mask = stack_slices(predictions, truth, slices, known, offsets is not None)
    return tune_segmentation(prob, labels, params, tune.grid, tune.measure, mask, offsets, threads)


def stack_slices(
    predictions: Any, truth: Any, slices: Sequence[int], known: Any = None, affinities: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Slices ``slices`` of a (classes, z, y, x) prediction (:func:`cell_probability`; with
    ``affinities`` all channels, (K, z, y, x)), of a (z, y, x) labels array and of ``known`` (True
    where nonzero; None stays None), stacked."""
    if affinities:
        prob = np.stack([affinity_slice(predictions, z) for z in slices], axis=1)
    else:
        prob = np.stack([cell_probability(predictions, z) for z in slices])
    labels = np.stack([np.asarray(truth[z]) for z in slices])
    mask = None if known is None else np.stack([np.asarray(known[z]) > 0 for z in slices])
    return prob, labels, mask


def _dask_runner(threads: int) -> agg.Runner:
    def run(function: Any, items: Sequence[Any]) -> list:
        tasks = [dask.delayed(function, pure=False)(item) for item in items]
        return list(dask.compute(*tasks, scheduler="threads", num_workers=threads))

    return run


@writes_output("output", "predictions", "tune_predictions", "image", beside="labels")
def segment_zarr(
    predictions: str | Path,
    output: str | Path,
    cfg: SegmentConfig | Mapping[str, Any] | None = None,
    threads: int = 1,
    truth: Any = None,
    tune_slices: Sequence[int] | None = None,
    tune_predictions: str | Path | None = None,
    known: Any = None,
    overwrite: bool = True,
    image: Any = None,
) -> None:
    """Segment a (classes, z, y, x) prediction Zarr into a (z, y, x) uint32 OME-Zarr label image:
    ``output`` itself, or with ``image`` (the (z, y, x) image predicted, e.g. the dataset's raw
    array) ``output`` is an OME-Zarr image of it holding the labels as ``labels/cells``
    (:func:`unetpipe.ngff.labelled_image`: napari opens both from either path, writing nothing).

    ``cfg`` = the ``segment`` config section. Slices (components, watershed) or blocks
    (agglomerate) run in parallel (Dask, ``threads`` workers); labels are distinct over the stack.
    With ``tune.enabled``, the parameters of :data:`GRIDS` (or ``tune.grid``) are first fixed by
    :func:`tune_on_slices` on slices ``tune_slices`` of ``tune_predictions`` (default
    ``predictions``) against the same slices of ``truth`` (a labels array), where ``known`` (the
    dataset's ``mask``, None: everywhere) says the truth is known; the choice and its table of
    scores are logged and kept in the output's ``tuning`` attribute.
    """
    params = SegmentConfig.from_mapping(cfg)
    tune = params.tune
    _check(params)
    source = _open_predictions(predictions)
    if params.method == "mutex_watershed":
        _check_mutex_source(source, params.mode, params.mutex_block, predictions)
    attributes: dict[str, Any] = {"predictions": relative_to_output(predictions, output)}
    if tune.enabled:
        if truth is None or tune_slices is None:
            raise ValueError("segment.tune.enabled needs the labels and the training slices")
        start = time.perf_counter()
        tuning_source = _open_predictions(tune_predictions) if tune_predictions else source
        require_grid(tuning_source, truth.shape, "the labels")
        chosen, table = tune_on_slices(
            tuning_source, truth, tune_slices, params, tune, known, threads
        )
        # the grid's values, validated
        params = SegmentConfig.from_mapping(params.to_mapping() | chosen)
        best = max(row[tune.measure] for row in table)
        attributes["tuning"] = {
            "measure": tune.measure,
            "slices": [int(z) for z in tune_slices],
            "predictions": relative_to_output(tune_predictions or predictions, output),
            "chosen": {k: chosen[k] for k in table[0] if k != tune.measure},
            "score": best,
            "table": table,
            "seconds": round(time.perf_counter() - start, 2),
        }
        log.info(
            "segment parameters fixed on slices %s: %s (%s %.4f; %d combinations in %.1f s)",
            attributes["tuning"]["slices"],
            attributes["tuning"]["chosen"],
            tune.measure,
            best,
            len(table),
            attributes["tuning"]["seconds"],
        )
    attributes["segment"] = params.to_mapping()
    if params.method == "agglomerate" or params.mutex_block:
        name = "block" if params.method == "agglomerate" else "mutex_block"
        block = tuple(getattr(params, name) or source.chunks[1:])
        if len(block) != 3 or min(block) < 1:
            raise ValueError(f"segment.{name} must be 3 positive sizes (z, y, x), got {block}")
        chunks = tuple(min(b, n) for b, n in zip(block, source.shape[1:], strict=True))
    else:
        chunks = (1, *source.chunks[2:])  # one slice per chunk: parallel writes never share

    if image is not None:
        shown = open_image(image)
        require_grid(shown, source.shape[1:], str(predictions))
        writing = labelled_image(output, shown)
    else:
        writing = label_image(output, source)
    with writing as level0:
        target = zarr.create_array(
            str(level0),
            shape=source.shape[1:],
            chunks=chunks,
            dtype=np.uint32,
            fill_value=0,
            attributes=attributes,
            config=STORE_EVERY_CHUNK,
        )
        if params.method == "agglomerate":
            count = _agglomerate_zarr(source, target, params, threads)
        elif params.method == "mutex_watershed" and params.mode == "3d":
            if params.mutex_block:
                count = _mutex_blocks_zarr(source, target, level0.parent, params, threads)
            else:
                labels = _segment(scaled_probability(source[:]), affinity_offsets(source), params)
                target[:] = labels
                count = int(labels.max())
        else:
            count = _slices_zarr(source, target, params, threads)
    log.info("%s: %d instances in %d slices", output, count, source.shape[1])


def segment_stage(
    predictions: str | Path,
    output: str | Path,
    cfg: SegmentConfig | Mapping[str, Any] | None = None,
    threads: int = 1,
    data: str | Path | None = None,
    split: Split | None = None,
    tune_slices: Sequence[int] | None = None,
    tune_predictions: str | Path | None = None,
    image: str | Path | None = None,
    overwrite: bool = True,
) -> None:
    """The segment stage, as rule ``segment`` and ``unetpipe segment`` run it:
    :func:`segment_zarr`, with ``tune.enabled`` tuned first against the labels of the dataset
    group ``data`` (scored where its ``mask`` says the truth is known) on ``tune_slices``, else on
    the tuning slices (:func:`unetpipe.splits.tuning`, by ``tune.silver_truth``) among the
    training slices of ``split`` (None: the group's own)."""
    params = SegmentConfig.from_mapping(cfg)
    truth = known = None
    if params.tune.enabled and data is not None:
        group = open_data(data)
        truth = group["labels"]
        known = group["mask"] if "mask" in group else None
        if tune_slices is None:
            train = (split or resolve(group))["train"]
            tune_slices = tuning(group.attrs, train, params.tune.silver_truth)
    segment_zarr(
        predictions,
        output,
        params,
        threads,
        truth,
        tune_slices,
        tune_predictions,
        known,
        overwrite=overwrite,
        image=image,
    )


def _check_mutex_source(
    source: ImageArray, mode: str, block: Sequence[int] | None, path: str | Path
) -> None:
    """An affinity map whose offsets fit ``mode``; in 3d mode without ``block`` one that fits in
    memory."""
    offsets = affinity_offsets(source)
    if offsets is None:
        raise ValueError(
            f"{path} holds class probabilities, not affinities: segment.method mutex_watershed "
            "needs a network trained with model.target affinities"
        )
    _affinity_volume(np.zeros((len(offsets), 1, 1, 1), np.float32), offsets, mode)
    voxels = int(np.prod(source.shape[1:]))
    if mode == "3d" and not block and voxels > MAX_3D_VOXELS:
        raise ValueError(
            f"{path}: {voxels} voxels, but the 3D Mutex Watershed of the whole volume runs in "
            f"memory (at most {MAX_3D_VOXELS}): set segment.mutex_block (e.g. [32, 512, 512]) to "
            "segment it by overlapping blocks"
        )


def _mutex_blocks_zarr(
    source: ImageArray, target: zarr.Array, folder: Path, params: SegmentConfig, threads: int
) -> int:
    """:func:`unetpipe.mutex.blockwise` of a (K, z, y, x) affinity array into ``target``, the
    grown blocks' labels in a scratch Zarr in ``folder`` (removed afterwards)."""
    offsets = affinity_offsets(source)
    plan = plan_blocks(source.shape[1:], params.mutex_block, offsets)
    scratch = zarr.create_array(
        str(folder / ".mutex-blocks"),
        shape=plan.scratch_shape,
        chunks=(1, *plan.scratch_shape[1:]),
        dtype=np.uint32,
        fill_value=0,
        config=STORE_EVERY_CHUNK,
    )
    count, write = blockwise(
        lambda lo, hi: scaled_probability(source[(slice(None), *map(slice, lo, hi))]),
        plan,
        offsets,
        scratch,
        float(params.bias),
        int(params.stride),
        _mask_threshold(params),
        int(params.min_size),
        _dask_runner(threads),
    )
    write(target)
    shutil.rmtree(folder / ".mutex-blocks")
    log.info("mutex watershed by %d overlapping blocks of %s", len(plan.cores), params.mutex_block)
    return count


def _agglomerate_zarr(
    source: ImageArray, target: zarr.Array, params: SegmentConfig, threads: int
) -> int:
    stop = float(params.merge_threshold)
    hierarchy, write = agg.build(
        lambda lo, hi: cell_region(source, lo, hi),
        target,
        target.chunks,
        _settings(params),
        stop,
        _dask_runner(threads),
    )
    table = _table(hierarchy, params, stop)
    write(table)
    return int(table.max())


def _slices_zarr(
    source: ImageArray, target: zarr.Array, params: SegmentConfig, threads: int
) -> int:
    offsets = affinity_offsets(source)

    def label(z: int) -> int:
        if params.method == "mutex_watershed":
            labels = _segment(affinity_slice(source, z), offsets, params)
        else:
            labels = _segment(cell_probability(source, z), None, params)
        target[z] = labels
        return int(labels.max())

    def shift(z: int, offset: int) -> None:
        labels = target[z]
        target[z] = np.where(labels > 0, labels + np.uint32(offset), 0)

    counts = dask.compute(
        *[dask.delayed(label)(z) for z in range(source.shape[1])],
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
    return int(sum(counts))
