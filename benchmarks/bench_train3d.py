"""3D training per tile size: seconds per step, output voxels per second and peak memory, side by
side with the 2D CPU recipe in one run.

The 3D net is the anisotropic layout for serial-section EM of docs/own-data.md (depth 4, base 16,
z pooled once and convolved from the third level on; config/isbi2012-3d-cv.yaml); the 2D row is
the CPU recipe's net (depth 5, base 16, 572 px; config/isbi2012-cpu.yaml). A training step as
``unetpipe.train`` runs it (benchmarks/bench_train.py: autocast forward, weighted loss, backward,
Adam), each row in its own process: the peak is that process's maximum resident memory above
what it held before the network was built (torch and its libraries), i.e. the network, its
activations, gradients and Adam's state for one tile. ``ratio`` is output voxels per second over
the 2D row's in the same precision.

    python benchmarks/bench_train3d.py                        # ~4 minutes on 2 idle cores
    python benchmarks/bench_train3d.py --precisions bfloat16 --steps 2
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys

ISBI_3D = {
    "dims": 3,
    "depth": 4,
    "base_channels": 16,
    "pool": [[1, 2, 2], [1, 2, 2], [2, 2, 2]],
    "kernel": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
}
ROWS = [
    ("2d", {"depth": 5, "base_channels": 16}, (572, 572)),
    ("3d", ISBI_3D, (20, 140, 140)),
    ("3d", ISBI_3D, (20, 204, 204)),
    ("3d", ISBI_3D, (28, 204, 204)),
    ("3d", ISBI_3D, (28, 268, 268)),
]


def measure(net: dict, tile: list[int], precision: str, steps: int) -> dict[str, float]:
    """One row, in this process: seconds per step and peak memory above the baseline (MiB)."""
    import torch
    from bench_train import timed_steps

    torch.zeros(1)  # the libraries' own memory belongs to the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = timed_steps("cpu", net, tuple(tile), precision, "channels_last", steps)["step"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"step": seconds, "peak_mib": (peak - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: one row, JSON
    args = parser.parse_args()
    if args.row:
        row = json.loads(args.row)
        print(json.dumps(measure(row["net"], row["tile"], row["precision"], args.steps)))
        return
    from unetpipe.model import UNet

    print(
        f"{'net':3s} {'tile':>14s} {'output':>14s} {'precision':9s} {'step s':>7s} "
        f"{'Mvox/s':>7s} {'ratio':>6s} {'peak MiB':>8s}"
    )
    for precision in args.precisions:
        baseline = None
        for name, net, tile in ROWS:
            out = UNet(**net).output_size(tuple(tile))
            row = json.dumps({"net": net, "tile": list(tile), "precision": precision})
            done = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps), "--row", row],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rate = math.prod(out) / result["step"]
            baseline = baseline or rate
            print(
                f"{name:3s} {'x'.join(map(str, tile)):>14s} {'x'.join(map(str, out)):>14s} "
                f"{precision:9s} {result['step']:7.3f} {rate / 1e6:7.3f} {rate / baseline:5.2f}x "
                f"{result['peak_mib']:8.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
