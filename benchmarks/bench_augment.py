"""Elastic deformation per 572-pixel sample: unetpipe.augment against elasticdeform, side by side.

``--dims 3``: per 116^3-voxel sample (a depth-3 3D U-Net's tile, 76^3 output), unetpipe.augment3d
against elasticdeform's 3D ``deform_random_grid`` (3 x 3 x 3 grid, sigma 10, on the 116^3 crop).

elasticdeform's ``deform_random_grid([image, labels, weights], points=3, sigma=10, order=[3, 0, 1],
crop=...)`` warps all three arrays on the 572 x 572 crop; ``augment_sample`` warps the image on the
572 input tile and labels/weights on the 388 output crop (what training needs), and, for equal
work, also with a 572 output. elasticdeform is a benchmark-only dependency (its 0.5.1 wheel fails
to import under numpy 2; ``pip install --no-binary elasticdeform elasticdeform==0.5.1`` works).

    python benchmarks/bench_augment.py [--repeats 15] [--dims 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from unetpipe.augment import augment_sample, sample_rng
from unetpipe.augment3d import augment_volume

SIZES = {2: (572, 388, 1024), 3: (116, 76, 160)}  # input tile, output tile, image per axis
ELASTIC_ONLY = {
    "elastic": {"enabled": True, "grid": 3, "sigma": 10.0},
    **{part: {"enabled": False} for part in ("rotation", "shift", "flip", "gray")},
}


def median_ms(runs: dict, repeats: int) -> dict[str, float]:
    """Median time of each run, interleaved so that load changes hit all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(index)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2)
    args = parser.parse_args()
    tile_size, out_size, size = SIZES[args.dims]
    shape = (size,) * args.dims
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, 1000, size=shape, dtype=np.uint32)
    weights = rng.random(shape, dtype=np.float32)
    corner = (size - tile_size) // 2
    crop = (slice(corner, corner + tile_size),) * args.dims
    augment = augment_sample if args.dims == 2 else augment_volume

    def ours(output: int, params: dict):
        def run(index: int) -> None:
            augment(
                image,
                labels,
                weights,
                input_size=tile_size,
                output_size=output,
                params=params,
                rng=sample_rng(0, index),
                origin=(corner,) * args.dims,
            )

        return run

    runs = {
        f"unetpipe elastic, {tile_size} image + {out_size} labels/weights": ours(
            out_size, ELASTIC_ONLY
        ),
        f"unetpipe elastic, {tile_size} image + {tile_size} labels/weights": ours(
            tile_size, ELASTIC_ONLY
        ),
        f"unetpipe all augmentations, {tile_size} + {out_size}": ours(out_size, {}),
    }
    try:
        import elasticdeform
    except ImportError:
        print("elasticdeform not installed: skipping it (pip install --no-binary elasticdeform")
        print("elasticdeform==0.5.1); timing unetpipe only")
        elasticdeform = None
    if elasticdeform is not None:

        def reference(index: int) -> None:
            np.random.seed(index)
            elasticdeform.deform_random_grid(
                [image, labels, weights],
                sigma=10,
                points=3,
                order=[3, 0, 1],
                mode="mirror",
                crop=crop,
            )

        runs[f"elasticdeform deform_random_grid, {tile_size} crop x 3 arrays"] = reference

    timings = median_ms(runs, args.repeats)
    for name, ms in timings.items():
        print(f"{name:60s} median {ms:7.1f} ms")
    if elasticdeform is not None:
        base = timings[f"elasticdeform deform_random_grid, {tile_size} crop x 3 arrays"]
        for name, ms in list(timings.items())[:3]:
            print(f"speed-up over elasticdeform: {base / ms:5.1f}x  ({name})")


if __name__ == "__main__":
    main()
