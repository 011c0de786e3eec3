"""Instances from a boundary map: components vs distance watershed vs agglomeration, each with its
parameters fixed on the training slices (unetpipe.segment.tune_segmentation), scored on others.

With a prediction Zarr (classes, z, y, x) and the dataset's Zarr group, the slices are the group's
splits unless given. Without a prediction, a stand-in cell-probability map is made from the real
ISBI 2012 labels (a local copy of the data when present, or the group's labels): the membranes with
gaps (which join cells), dark specks and organelle-like rings inside the cells (which split them),
Gaussian blur and noise, quantised to uint8 like a prediction (:func:`stand_in`). Prints instance
V_rand, the same after the ISBI 2012 border thinning of both labellings (the measure of the paper's
Table 1), CTC SEG and DET on the scored slices (where the group's ``mask`` says the truth is
known), the chosen parameters, the timings, the time of the agglomeration on one 512 x 512 slice,
and checks that the block-wise (Dask, Zarr) agglomeration equals the in-memory one on the scored
slices. ``--grid KEY=V1,V2`` replaces that parameter's values in every method's grid that has it.

    python benchmarks/bench_segment.py                                  # stand-in, 0-24 / 25-29
    python benchmarks/bench_segment.py --predictions RUN/predictions/raw.zarr --data data.zarr
    python benchmarks/bench_segment.py ... --measure op_csb --grid min_size=0,100,200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage

from unetpipe.cli.evaluate import parse_grid
from unetpipe.datasets import binary_to_instances
from unetpipe.io import open_data, read_splits, read_stack
from unetpipe.metrics import thinned_v_rand
from unetpipe.ngff import cell_probability, open_image
from unetpipe.segment import (
    DEFAULTS,
    GRIDS,
    MEASURES,
    score,
    segment_volume,
    segment_zarr,
    tune_segmentation,
)

ISBI_LABELS = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared/data/isbi2012/reconstructed/train-labels.tif"
)
METHODS = {  # name: (the method's settings, its tuning grid; None = the method's default)
    "components": ({"method": "components"}, None),
    "watershed": ({"method": "watershed", "relief": "distance"}, None),
    "agglomerate": ({"method": "agglomerate"}, None),  # relief distance, no mask (EM)
    "agglomerate-mask": (  # background = probability <= threshold, as for cells
        {"method": "agglomerate", "mask": True},
        GRIDS["agglomerate"] | {"threshold": [0.3, 0.5, 0.7]},
    ),
}


def stand_in(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """A noisy cell-probability stack (uint8) from instance labels (0 = membrane): per slice 20
    gaps (disks of 7 px) in the membranes, 60 dark specks (disks of 7 px, probability 0.3) and
    8 organelle-like rings (radius 5-8 px, 0.25) inside the cells, Gaussian blur (1.5 px), and
    noise (std 0.25, blurred by 1 px)."""
    rng = np.random.default_rng(seed)
    cell = (truth > 0).astype(np.float64)
    disk = np.hypot(*np.mgrid[-4:5, -4:5]) <= 3.5
    yy, xx = np.mgrid[: truth.shape[1], : truth.shape[2]]
    for z in range(truth.shape[0]):
        inside = np.flatnonzero(truth[z] > 0)
        marks = np.zeros(truth.shape[1:], bool)
        marks.flat[rng.choice(np.flatnonzero(truth[z] == 0), 20, replace=False)] = True
        cell[z][ndimage.binary_dilation(marks, disk)] = 1.0  # gaps in the membranes
        marks[:] = False
        marks.flat[rng.choice(inside, 60, replace=False)] = True
        cell[z][ndimage.binary_dilation(marks, disk)] = 0.3  # dark specks
        for centre, radius in zip(rng.choice(inside, 8), rng.uniform(5, 8, 8), strict=True):
            y, x = divmod(int(centre), truth.shape[2])
            cell[z][np.abs(np.hypot(yy - y, xx - x) - radius) < 0.75] = 0.25  # organelles
    prob = ndimage.gaussian_filter(cell, (0, 1.5, 1.5))
    prob += ndimage.gaussian_filter(rng.normal(0, 0.25, prob.shape), (0, 1, 1))
    return np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)


def load(
    args: argparse.Namespace,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], list[int], str]:
    """Cell probability (float32), truth and where it is known of all slices, the training and
    scored slices."""
    group = open_data(args.data) if args.data else None
    truth = (
        np.asarray(group["labels"][:])
        if group is not None
        else binary_to_instances(read_stack(args.isbi_labels))
    )
    known = (
        np.asarray(group["mask"][:]) > 0
        if group is not None and "mask" in group
        else np.ones(truth.shape, bool)
    )
    splits = read_splits(group) if group is not None else {"train": [], "val": []}
    train = parse(args.train) if args.train else splits["train"] or list(range(25))
    scored = parse(args.score) if args.score else splits["val"] or list(range(25, 30))
    if set(train) & set(scored):
        raise SystemExit(f"training slices {train} and scored slices {scored} overlap")
    if args.predictions:
        pred = open_image(args.predictions, "czyx")
        prob = np.stack([cell_probability(pred, z) for z in range(pred.shape[1])])
        return prob, truth, known, train, scored, f"predictions {args.predictions}"
    prob = stand_in(truth).astype(np.float32) / 255
    return prob, truth, known, train, scored, "stand-in boundary map from the ISBI labels"


def parse(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", help="(classes, z, y, x) prediction Zarr of the labels")
    parser.add_argument("--data", help="the dataset's Zarr group (labels, splits)")
    parser.add_argument("--train", help="training slices, e.g. 0-24 (default: the group's split)")
    parser.add_argument("--score", help="scored slices, e.g. 25-29 (default: the group's split)")
    parser.add_argument(
        "--isbi-labels", default=ISBI_LABELS, help="ISBI train-labels.tif for the stand-in"
    )
    parser.add_argument("--measure", default="v_rand", choices=list(MEASURES))
    parser.add_argument(
        "--grid", action="append", metavar="KEY=V1,V2", help="values to try instead (repeat)"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(METHODS)}")
    parser.add_argument("--threads", type=int, default=2, help="Dask threads (block-wise check)")
    args = parser.parse_args()
    prob, truth, known, train, scored, what = load(args)
    overrides = dict(parse_grid(text) for text in args.grid or [])
    print(f"{what}; {prob.shape[1]} x {prob.shape[2]} slices; tuned on {train} by {args.measure}")
    print(f"scored on {scored}; timings on a shared, loaded 2-core machine\n")
    header = f"{'method':16s} {'V_rand':>7s} {'thinned':>7s} {'SEG':>6s} {'DET':>6s}"
    print(f"{header} {'objects':>7s} {'tune s':>7s} {'segment s':>9s}  chosen")
    chosen_all = {}
    for name in args.methods.split(","):
        start = time.perf_counter()
        cfg, grid = METHODS[name]
        grid = dict(grid or GRIDS[cfg["method"]])
        grid |= {k: v for k, v in overrides.items() if k in grid}
        chosen, table = tune_segmentation(
            prob[train], truth[train], cfg, grid, args.measure, known[train]
        )
        tuned = time.perf_counter() - start
        start = time.perf_counter()
        labels = segment_volume(prob[scored], **chosen)
        took = time.perf_counter() - start
        v_rand, seg, det = (
            score(labels, truth[scored], m, known=known[scored]) for m in ("v_rand", "seg", "det")
        )
        thinned = thinned_v_rand(
            *(np.where(known[scored], a, 0) for a in (labels, truth[scored])), known[scored]
        )
        grid = {k: chosen[k] for k in table[0] if k != args.measure}
        print(
            f"{name:16s} {v_rand:7.4f} {thinned:7.4f} {seg:6.4f} {det:6.4f} "
            f"{int(labels.max()):7d} {tuned:7.1f} {took:9.2f}  {grid} "
            f"(train {args.measure} {max(r[args.measure] for r in table):.4f}, {len(table)} rows)"
        )
        chosen_all[name] = chosen
    if "agglomerate" not in chosen_all:
        return
    params = chosen_all["agglomerate"]
    one = prob[scored[0]]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        segment_volume(one, **params)
        times.append(time.perf_counter() - start)
    print(f"\nagglomerate, one {one.shape[0]} x {one.shape[1]} slice: {np.median(times):.3f} s")
    blockwise(prob[scored], params, args.threads)


def blockwise(prob: np.ndarray, params: dict, threads: int) -> None:
    """segment_zarr on (1, 256, 256) blocks against the in-memory result."""
    with tempfile.TemporaryDirectory() as tmp:
        pred = zarr.create_array(
            f"{tmp}/pred.zarr", shape=(2, *prob.shape), chunks=(2, 1, 256, 256), dtype=np.uint8
        )
        pred[1] = np.round(prob * 255).astype(np.uint8)
        pred[0] = 255 - pred[1][:]
        start = time.perf_counter()
        whole = segment_volume(pred[1][:].astype(np.float32) / 255, **params)
        memory = time.perf_counter() - start
        cfg = {k: v for k, v in params.items() if k in DEFAULTS} | {"block": [1, 256, 256]}
        start = time.perf_counter()
        segment_zarr(f"{tmp}/pred.zarr", f"{tmp}/seg.zarr", cfg, threads)
        blocks = time.perf_counter() - start
        same = np.array_equal(open_image(f"{tmp}/seg.zarr")[:], whole)
    print(
        f"block-wise (1, 256, 256) blocks, {threads} threads: {blocks:.2f} s; in memory "
        f"{memory:.2f} s; identical labels: {same}"
    )


if __name__ == "__main__":
    main()
