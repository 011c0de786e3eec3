"""The 3D Mutex Watershed by overlapping blocks vs the whole volume (issue 30): disagreement and
peak memory.

ISBI 2012 has no 3D truth and unetpipe trains no 3D affinity net on it yet, so the 3D affinity map
is built from a 2D affinity net's predictions of the stack (``--predictions``, e.g. a fold of
``config/isbi2012-affinities-cv.yaml``): the net's (y, x) offsets as in-plane channels, and z
channels ``[-d, 0, 0]`` for d = 1, 2, 3 (as :data:`unetpipe.affinities.OFFSETS_3D`), each the
smaller of the two voxels' cell maps (:func:`stack_3d`). On each
5-slice fold of the stack and on the whole stack it prints the V_rand between the block-wise and
the whole-volume instances (1 = identical; both as the segment stage makes them) for the blocks
given, the objects and the times; then the peak memory (VmHWM of a fresh process running
:func:`unetpipe.segment.segment_zarr` on a Zarr copy) as the volume grows by tiling it in (y, x),
whole vs block-wise.

    python benchmarks/bench_mutex_blocks.py --predictions RUN/fold-6/predictions/train.zarr
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from unetpipe.affinities import cell_map
from unetpipe.metrics import v_rand
from unetpipe.mutex import MAX_3D_VOXELS
from unetpipe.ngff import affinity_offsets, open_image
from unetpipe.segment import segment_volume

Z_STEPS = (1, 2, 3)


def stack_3d(predictions: str | Path) -> tuple[np.ndarray, list[list[int]]]:
    """(K + 3, z, y, x) float32 affinities and their 3D offsets, from a 2D affinity net's
    (K, z, y, x) predictions (see the module docstring)."""
    source = open_image(predictions, "czyx")
    offsets = affinity_offsets(source)
    if offsets is None or len(offsets[0]) != 2:
        raise SystemExit(f"{predictions}: not the predictions of a 2D affinity network")
    scale = float(source.attrs.get("scale", 1.0))
    prob = np.asarray(source[:], np.float32) * scale
    cells = cell_map(prob, {"offsets": offsets})
    z = np.zeros((len(Z_STEPS), *cells.shape), np.float32)
    for k, d in enumerate(Z_STEPS):
        z[k, d:] = np.minimum(cells[d:], cells[:-d])
    lifted = [[0, dy, dx] for dy, dx in offsets]
    return np.concatenate([prob, z]), lifted + [[-d, 0, 0] for d in Z_STEPS]


def compare(
    name: str, affinities: np.ndarray, offsets: list[list[int]], blocks: list[list[int]]
) -> None:
    """The instances as the segment stage makes them (``segment_volume``: mode 3d, objects under
    MIN_SIZE dropped, every voxel labelled), whole vs by blocks."""
    settings = {"method": "mutex_watershed", "mode": "3d", "min_size": MIN_SIZE}
    start = time.perf_counter()
    whole = segment_volume(affinities, offsets, **settings)
    seconds = time.perf_counter() - start
    objects = int(whole.max())
    line = f"{name:<14} {affinities.shape[1:]!s:<16} whole {objects:5d} objects {seconds:6.1f} s"
    for block in blocks:
        start = time.perf_counter()
        labels = segment_volume(affinities, offsets, **settings, mutex_block=block)
        seconds = time.perf_counter() - start
        agreement = v_rand(labels, whole)
        line += f" | {block}: V_rand {agreement:.4f}, {labels.max():5d} objects {seconds:6.1f} s"
    print(line, flush=True)


MIN_SIZE = 64
CHILD = """
import re, sys, time
from pathlib import Path
from unetpipe.segment import segment_zarr
cfg = {"method": "mutex_watershed", "mode": "3d", "min_size": 64}
block = %r
if block:
    cfg["mutex_block"] = block
start = time.perf_counter()
segment_zarr(sys.argv[1], sys.argv[2], cfg, threads=1)
# VmHWM, not ru_maxrss: Linux carries the parent's peak over fork and exec into ru_maxrss.
peak = re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)
print(time.perf_counter() - start, peak)
"""


def peak(path: Path, block: list[int] | None) -> tuple[float, float]:
    """(seconds, peak RSS in GiB) of segmenting the affinities at ``path`` in a fresh process."""
    out = path.parent / f"seg-{path.name}-{block}.zarr"
    result = subprocess.run(
        [sys.executable, "-c", CHILD % (block,), str(path), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, kib = result.stdout.split()[-2:]
    return float(seconds), int(kib) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", required=True, help="a 2D affinity net's predictions")
    parser.add_argument("--blocks", default="5,256,256;3,256,256;5,128,128")
    parser.add_argument("--tiles", default="1,2,3", help="(y, x) tilings for the memory table")
    parser.add_argument("--memory-block", default="10,256,256")
    args = parser.parse_args()
    blocks = [[int(v) for v in b.split(",")] for b in args.blocks.split(";")]
    affinities, offsets = stack_3d(args.predictions)
    print(f"3D affinities {affinities.shape} from {args.predictions}, offsets {offsets}")
    for first in range(0, affinities.shape[1], 5):
        compare(f"slices {first}-{first + 4}", affinities[:, first : first + 5], offsets, blocks)
    compare("whole stack", affinities, offsets, [[10, 256, 256]])

    memory_block = [int(v) for v in args.memory_block.split(",")]
    print(f"\npeak memory (VmHWM of a fresh process), whole vs blocks of {memory_block}:")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(t) for t in args.tiles.split(",")):
            tiled = np.tile(affinities, (1, 1, n, n))
            path = Path(tmp) / f"aff-{n}.zarr"
            array = zarr.create_array(
                str(path), shape=tiled.shape, chunks=(len(offsets), 10, 256, 256), dtype="f2"
            )
            array[:] = tiled
            array.attrs.update({"offsets": offsets})
            voxels = int(np.prod(tiled.shape[1:]))
            row = {"shape": list(tiled.shape[1:]), "voxels": voxels}
            if voxels <= MAX_3D_VOXELS:
                row["whole"] = peak(path, None)
            row["blocks"] = peak(path, memory_block)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
