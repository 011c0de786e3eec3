"""How well post-processing fixed on the training frames carries over to the scored ones (issue
12), on a finished run with ``segment.tune``: every combination of its grid scored by SEG on the
run's held-out gold frames, the held-out rank of the combination its tuning chose, the best
held-out combination (which no protocol may pick: it is chosen on the scored frames) and the
Spearman rank correlation of the training and held-out scores over the grid; then the grid tuned
again on the training sequence's gold frames alone and on all its labelled frames (silver truth
too: ``segment.tune.silver_truth``), each choice with its held-out SEG and DET.

    python benchmarks/tuning_transfer.py results/dic-c2dh-hela-local/cpu/val-02 \\
        --data results/dic-c2dh-hela-local/data.zarr
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import zarr
from scipy.stats import spearmanr
from small_objects import attribute  # a sibling script

from unetpipe.ngff import open_image
from unetpipe.segment import score, segment_volume, stack_slices, tune_segmentation
from unetpipe.splits import tuning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run: RESULTS/<run>[/<fold>]")
    parser.add_argument("--data", type=Path, required=True, help="the dataset's Zarr group")
    args = parser.parse_args()
    segmentation = args.run / "segmentation" / "raw.zarr"
    recorded = attribute(segmentation, "tuning")
    base = {k: v for k, v in attribute(segmentation, "segment").items() if k != "block"}
    measure = recorded["measure"]
    names = sorted(recorded["chosen"])
    grid = {k: sorted({row[k] for row in recorded["table"]}) for k in names}
    split = json.loads((args.run / "metrics.json").read_text())["split"]
    group = zarr.open_group(str(args.data), mode="r")
    predictions = open_image(args.run / "predictions" / "raw.zarr", "czyx")
    known = group["mask"] if "mask" in group else None

    def stacked(slices: list[int]) -> tuple:
        return stack_slices(predictions, group["labels"], slices, known)

    held = stacked(split["val"])
    _, rows = tune_segmentation(*held[:2], base, grid, "seg", held[2])
    key = {tuple(row[k] for k in names): row["seg"] for row in rows}
    trained = np.array([row[measure] for row in recorded["table"]])
    seg = np.array([key[tuple(row[k] for k in names)] for row in recorded["table"]])
    chosen = seg[int(np.argmax(trained))]  # the tuner's first best
    best = int(np.argmax(seg))
    print(f"{args.run}: {len(rows)} combinations of {names}, tuned by {measure}")
    print(
        f"recorded tuning ({len(recorded['slices'])} training frames): held-out SEG {chosen:.4f}, "
        f"rank {int((seg > chosen).sum()) + 1} of {seg.size}; best held-out {seg[best]:.4f} "
        f"({ {k: recorded['table'][best][k] for k in names} }); "
        f"Spearman(training, held-out) {spearmanr(trained, seg).statistic:.3f}"
    )
    print("| tuned on (training sequence) | frames | chosen | training | SEG | DET | seconds |")
    print("|---|---|---|---|---|---|---|")
    for silver in (False, True):
        frames = tuning(group.attrs, split["train"], silver)
        prob, truth, mask = stacked(frames)
        start = time.perf_counter()
        params, table = tune_segmentation(prob, truth, base, grid, measure, mask)
        seconds = time.perf_counter() - start
        labels = segment_volume(held[0], **params)
        print(
            f"| {'all labelled frames' if silver else 'gold frames'} | {len(frames)} "
            f"| { {k: params[k] for k in names} } | {max(r[measure] for r in table):.4f} "
            f"| {score(labels, held[1], 'seg', known=held[2]):.4f} "
            f"| {score(labels, held[1], 'det', known=held[2]):.4f} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
