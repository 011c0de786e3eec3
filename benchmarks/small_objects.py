"""What ``segment.small_objects`` does on a finished run (issue 12): the held-out instances of the
parameters its tuning fixed on the training frames, with the segments under ``min_size`` dropped
(background) and merged (joined to the neighbour of lowest mean boundary probability), and of the
best training row of each setting. Scored like ``evaluate`` (CTC SEG and DET, per frame, where the
group's ``mask`` says the truth is known) on the run's scored slices (``metrics.json``).

    python benchmarks/small_objects.py results/dic-c2dh-hela-local/cpu/val-01 \\
        --data results/dic-c2dh-hela-local/data.zarr
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from unetpipe.agglomerate import SMALL
from unetpipe.ngff import open_image
from unetpipe.segment import score, segment_volume, stack_slices


def attribute(segmentation: Path, key: str) -> dict[str, Any]:
    """An attribute that ``segment_zarr`` left on a run's label image (``tuning``, ``segment``)."""
    for _, array in zarr.open_group(str(segmentation), mode="r").members(max_depth=None):
        if isinstance(array, zarr.Array) and key in array.attrs:
            return dict(array.attrs[key])
    raise SystemExit(f"{segmentation}: no {key} attribute (was segment.tune enabled?)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run: RESULTS/<run>[/<fold>]")
    parser.add_argument("--data", type=Path, required=True, help="the dataset's Zarr group")
    args = parser.parse_args()
    segmentation = args.run / "segmentation" / "raw.zarr"
    tuning = attribute(segmentation, "tuning")
    base = {
        k: v for k, v in attribute(segmentation, "segment").items() if k not in ("tune", "block")
    }
    settings = json.loads((args.run / "metrics.json").read_text())
    slices = settings["results"]["val"]["slices"]
    group = zarr.open_group(str(args.data), mode="r")
    predictions = open_image(args.run / "predictions" / "raw.zarr", "czyx")
    known = group["mask"] if "mask" in group else None
    prob, truth, known = stack_slices(predictions, group["labels"], slices, known)
    measure = tuning["measure"]
    rows = [("chosen", tuning["chosen"])]
    for small in SMALL:
        table = [r for r in tuning["table"] if r.get("small_objects", "drop") == small]
        best = max(table, key=lambda r: r[measure], default=None)
        if best is not None and any(best[k] != v for k, v in tuning["chosen"].items()):
            rows.append((f"best {small} ({measure} {best[measure]:.4f})", best))
    print(f"{args.run}: {len(slices)} scored slices; tuned by {measure} on {tuning['slices']}")
    print("| parameters (fixed on the training slices) | small_objects | SEG | DET | segments |")
    print("|---|---|---|---|---|")
    for name, row in rows:
        params = {k: v for k, v in row.items() if k != measure}
        for small in SMALL:
            labels = segment_volume(prob, **(base | params | {"small_objects": small}))
            seg = score(labels, truth, "seg", known=known)
            det = score(labels, truth, "det", known=known)
            count = sum(np.unique(plane).size - 1 for plane in labels)
            print(f"| {name}: {params} | {small} | {seg:.4f} | {det:.4f} | {count} |")


if __name__ == "__main__":
    main()
