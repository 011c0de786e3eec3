"""The ISBI 2012 warping error sweep (unetpipe.metrics.warping_scores): its time on 5 real label
slices of 512 x 512 (ISBI training slices 25-29, the validation slices) against an imperfect
cell-probability map, 11 thresholds 0.0 .. 1.0.

No trained network is needed: the map is the ground truth blurred, with smooth noise, a few cells
cut by artificial membranes (splits) and a few membranes bridged (mergers). Prints the time of
each slice at each threshold (one call of warping_error), then the whole sweep on the stack, which
leaves out the thresholds at which no pixel is a cell (t = 1.0 here).

    python benchmarks/bench_warping.py [--slices 25 26 27 28 29] [--seed 0] [--labels DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from unetpipe.io import read_image
from unetpipe.metrics import ISBI_THRESHOLDS, warping_error, warping_scores

ISBI_LABELS = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared/data/isbi2012/zhixuhao_unet/data/membrane/train/label"
)


def imperfect_probability(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A network-like cell probability of one slice: blurred truth, smooth noise, 6 cells split by a
    dark line, 6 membranes bridged by a bright patch."""
    cell = ndimage.gaussian_filter((labels > 0).astype(np.float32), 1.0)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, labels.shape), 2.0)
    prob = cell + 0.15 * noise / noise.std()
    objects, count = ndimage.label(labels > 0)
    centres = ndimage.center_of_mass(labels > 0, objects, range(1, count + 1))
    for y, x in (centres[i] for i in rng.choice(count, 6, replace=False)):
        y, x = int(y), int(x)
        prob[y, max(x - 15, 0) : x + 15] = 0.05  # a membrane across the cell (if it is wide)
    membrane = np.argwhere(ndimage.binary_erosion(labels == 0, iterations=1))
    for y, x in membrane[rng.choice(len(membrane), 6, replace=False)]:
        prob[max(y - 3, 0) : y + 4, max(x - 3, 0) : x + 4] = 0.9  # a gap in the membrane
    return np.clip(prob, 0.0, 1.0).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[25, 26, 27, 28, 29])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", type=Path, default=ISBI_LABELS, help="folder of <z>.png labels")
    args = parser.parse_args()
    if not args.labels.is_dir():
        raise FileNotFoundError(f"{args.labels} is absent: pass --labels, the ISBI 2012 PNG labels")
    rng = np.random.default_rng(args.seed)
    truth = np.stack([read_image(args.labels / f"{z}.png") for z in args.slices])
    prob = np.stack([imperfect_probability(labels, rng) for labels in truth])
    print(f"{len(args.slices)} slices {truth.shape[1]} x {truth.shape[2]}, 11 thresholds")
    print("threshold  " + "  ".join(f"slice {z:>2}" for z in args.slices) + "  warping error")
    total = 0.0
    for t in ISBI_THRESHOLDS:
        row, wrong = [], 0.0
        for z in range(len(args.slices)):
            start = time.perf_counter()
            result = warping_error(prob[z], truth[z], float(t))
            row.append(time.perf_counter() - start)
            wrong += result["warping_error"] * result["pixels"]
        total += sum(row)
        error = wrong / truth.size  # pooled over the slices
        print(f"{t:9.1f}  " + "  ".join(f"{s:7.2f}s" for s in row) + f"  {error:.6f}")
    print(f"all slices x all thresholds, one call each: {total:.1f} s")
    start = time.perf_counter()
    scores = warping_scores(prob, truth, ISBI_THRESHOLDS)
    elapsed = time.perf_counter() - start
    print(f"warping_scores (the sweep evaluate runs): {elapsed:.1f} s -> {scores}")


if __name__ == "__main__":
    main()
