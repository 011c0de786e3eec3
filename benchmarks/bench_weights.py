"""Weight maps (Eq. 2): unetpipe.weights.weight_map against the naive reference, side by side.

The naive reference computes one full-image distance transform per cell and sorts them per pixel
(what the authors' plugin and most reimplementations do). Inputs: 512 x 512 random Voronoi cells
with one-pixel membranes (~200 cells), and the real ISBI 2012 training labels (connected components
of label == 255) when a local copy of the data is present.

    python benchmarks/bench_weights.py [--repeats 5] [--cells 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from unetpipe.weights import weight_map

ISBI_LABELS = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared/data/isbi2012/zhixuhao_unet/data/membrane/train/label"
)


def naive(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    ids = [i for i in np.unique(labels) if i > 0]
    dist = np.sort([ndimage.distance_transform_edt(labels != i) for i in ids], axis=0)
    border = w0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * sigma**2))
    return (1.0 + np.where(labels == 0, border, 0.0)).astype(np.float32)


def voronoi(shape: tuple[int, int], cells: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.uint32)
    seeds[rng.integers(0, shape[0], cells), rng.integers(0, shape[1], cells)] = np.arange(
        1, cells + 1
    )
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(nearest)]
    edge = np.zeros(shape, bool)
    edge[1:] |= np.diff(labels, axis=0) != 0
    edge[:, 1:] |= np.diff(labels, axis=1) != 0
    labels[edge] = 0
    return labels


def compare(name: str, labels: np.ndarray, repeats: int) -> None:
    """Median time of both, interleaved so that load changes hit both alike, and the max error."""
    times: dict[str, list[float]] = {"naive": [], "fast": []}
    for _ in range(repeats):
        for method, run in (
            ("naive", naive),
            ("fast", lambda x: weight_map(x, class_weights=None)),
        ):
            start = time.perf_counter()
            result = run(labels)
            times[method].append(time.perf_counter() - start)
            if method == "naive":
                reference = result
        error = float(np.abs(result - reference).max())
    naive_s, fast_s = np.median(times["naive"]), np.median(times["fast"])
    cells = len(np.unique(labels)) - (0 in labels)
    print(
        f"{name:34s} {cells:4d} cells  naive {1e3 * naive_s:8.1f} ms  weight_map "
        f"{1e3 * fast_s:6.1f} ms  speed-up {naive_s / fast_s:6.1f}x  max |diff| {error:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cells", type=int, default=200)
    args = parser.parse_args()
    labels = voronoi((512, 512), args.cells)
    compare("Voronoi 512 x 512", labels, args.repeats)
    if not ISBI_LABELS.is_dir():
        print(f"{ISBI_LABELS} absent: skipping the real ISBI 2012 labels")
        return
    from PIL import Image

    for png in sorted(ISBI_LABELS.glob("*.png"), key=lambda p: int(p.stem))[:3]:
        isbi, _ = ndimage.label(np.asarray(Image.open(png)) == 255)
        compare(f"ISBI 2012 train label {png.name}", isbi, args.repeats)


if __name__ == "__main__":
    main()
