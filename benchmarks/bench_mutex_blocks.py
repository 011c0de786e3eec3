"""The 3D Mutex Watershed by overlapping blocks vs the whole volume (issue 30): disagreement and
peak memory.

ISBI 2012 has no 3D truth and unetpipe trains no 3D affinity net on it yet, so the 3D affinity map
is built from a 2D affinity net's predictions of the stack (``--predictions``, e.g. a fold of
``config/isbi2012-affinities-cv.yaml``): the in-plane channels of
:data:`unetpipe.affinities.OFFSETS_3D` are the net's channels of the same (y, x) offsets, a z
channel ``[-d, 0, 0]`` is the smaller of the two voxels' cell maps (:func:`stack_3d`). On each
5-slice fold of the stack and on the whole stack it prints the V_rand between the block-wise and
the whole-volume partition (1 = identical) for the blocks given, the objects and the times; then
the peak memory (max RSS of a fresh process running :func:`unetpipe.segment.segment_zarr` on a
Zarr copy) as the volume grows by tiling it in (y, x), whole vs block-wise.

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

from unetpipe.affinities import OFFSETS_3D, cell_map
from unetpipe.metrics import v_rand
from unetpipe.mutex import MAX_3D_VOXELS, mutex_watershed, mutex_watershed_blocks
from unetpipe.ngff import open_image
from unetpipe.segment import affinity_offsets


def stack_3d(predictions: str | Path) -> np.ndarray:
    """(len(OFFSETS_3D), z, y, x) float32 affinities of a 2D affinity net's (K, z, y, x)
    predictions (see the module docstring)."""
    source = open_image(predictions, "czyx")
    offsets = affinity_offsets(source)
    if offsets is None or len(offsets[0]) != 2:
        raise SystemExit(f"{predictions}: not the predictions of a 2D affinity network")
    scale = float(source.attrs.get("scale", 1.0))
    prob = np.asarray(source[:], np.float32) * scale
    cells = cell_map(prob, {"offsets": offsets})
    out = np.zeros((len(OFFSETS_3D), *cells.shape), np.float32)
    for k, (dz, dy, dx) in enumerate(OFFSETS_3D):
        if dz == 0:
            out[k] = prob[offsets.index([dy, dx])]
        else:
            out[k, -dz:] = np.minimum(cells[-dz:], cells[:dz])
    return out


def compare(name: str, affinities: np.ndarray, blocks: list[list[int]]) -> None:
    start = time.perf_counter()
    whole = mutex_watershed(affinities, OFFSETS_3D)
    seconds = time.perf_counter() - start
    objects = len(np.unique(whole)) - 1
    line = f"{name:<14} {affinities.shape[1:]!s:<16} whole {objects:5d} objects {seconds:6.1f} s"
    for block in blocks:
        start = time.perf_counter()
        labels = mutex_watershed_blocks(affinities, OFFSETS_3D, block)
        seconds = time.perf_counter() - start
        agreement = v_rand(labels, whole)
        line += f" | {block}: V_rand {agreement:.4f}, {labels.max():5d} objects {seconds:6.1f} s"
    print(line, flush=True)


CHILD = """
import resource, sys, time
from unetpipe.segment import segment_zarr
cfg = {"method": "mutex_watershed", "mode": "3d", "min_size": 0}
block = %r
if block:
    cfg["mutex_block"] = block
start = time.perf_counter()
segment_zarr(sys.argv[1], sys.argv[2], cfg, threads=1)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
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
    affinities = stack_3d(args.predictions)
    print(f"3D affinities {affinities.shape} from {args.predictions}")
    for first in range(0, affinities.shape[1], 5):
        compare(f"slices {first}-{first + 4}", affinities[:, first : first + 5], blocks)
    compare("whole stack", affinities, [[10, 256, 256]])

    memory_block = [int(v) for v in args.memory_block.split(",")]
    print(f"\npeak memory (max RSS, fresh process), whole vs blocks of {memory_block}:")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(t) for t in args.tiles.split(",")):
            tiled = np.tile(affinities, (1, 1, n, n))
            path = Path(tmp) / f"aff-{n}.zarr"
            array = zarr.create_array(
                str(path), shape=tiled.shape, chunks=(len(OFFSETS_3D), 10, 256, 256), dtype="f2"
            )
            array[:] = tiled
            array.attrs.update({"offsets": OFFSETS_3D})
            voxels = int(np.prod(tiled.shape[1:]))
            row = {"shape": list(tiled.shape[1:]), "voxels": voxels}
            if voxels <= MAX_3D_VOXELS:
                row["whole"] = peak(path, None)
            row["blocks"] = peak(path, memory_block)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
