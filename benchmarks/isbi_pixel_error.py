"""Where the ISBI 2012 pixel error of a cross-validation comes from (issue 18): every wrong pixel
of the held-out slices, at the threshold fixed on the fold's training slices, by its distance to
the ground truth's cell / membrane interface (:func:`unetpipe.metrics.pixel_errors_by_distance`).

Prints, per fold and over the folds: the pixel error, the part of it that lies next to the
interface (1 px: where the annotator's membrane edge and the network's disagree by one pixel),
at 2 px, and farther (missed or invented membranes, organelles; the parts after the first add
up to the pixel error with the errors up to 1 px forgiven), the share of wrong pixels that are
membrane called cell, the truth's interface density (cell pixels touching a membrane per cell
pixel), and the pixel error at a threshold fixed on the training slices from a grid of 0.01
steps instead of the ISBI script's 0.1; then the correlation of per-slice pixel error with that
density over all scored slices. With ``--figure`` also a plot of both and an error map.

    python benchmarks/isbi_pixel_error.py results/isbi2012/cv/fold-* \\
        --data results/isbi2012/data.zarr --figure docs/figures/isbi_pixel_error.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from matplotlib.figure import Figure

from unetpipe.metrics import (
    interface_distance,
    pixel_error_beyond,
    pixel_errors_by_distance,
    pixel_fscores,
)
from unetpipe.ngff import cell_probability, open_image

FINE = np.round(np.arange(1, 100) * 0.01, 2)  # a finer threshold grid than the ISBI script's
GOAL, PAPER = 0.045, 0.0611  # issue 18's goal; the paper's Table 1 (ISBI test set)
PARTS = ("next to the interface (1 px)", "2 px", "3 px and farther")
COLOURS = ("#4c72b0", "#8fb0d8", "#d65f5f")  # of the parts, in the bars and the error map


def pooled(counts: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several :func:`pixel_errors_by_distance` results (histograms padded)."""
    size = max(c["false_positive"].size for c in counts)
    pad = lambda a: np.pad(a, (0, size - a.size))  # noqa: E731
    return {
        key: sum(pad(c[key]) if isinstance(c[key], np.ndarray) else c[key] for c in counts)
        for key in counts[0]
    }


def parts(errors: dict[str, Any]) -> list[float]:
    """The pixel error split into the three parts of :data:`PARTS` (they add up to it)."""
    e0, e1, e2 = (pixel_error_beyond(errors, d) for d in (0, 1, 2))
    return [e0 - e1, e1 - e2, e2]


def probability(predictions: Any, slices: list[int]) -> np.ndarray:
    return np.stack([cell_probability(predictions, z) for z in slices])


def analyse_fold(run: Path, group: zarr.Group) -> dict[str, Any]:
    """Per-slice and pooled error counts of one fold's held-out slices at its fixed threshold."""
    report = json.loads((run / "metrics.json").read_text())
    slices = report["results"]["val"]["slices"]
    threshold = report["thresholds_from_training"]["pixel_error"]
    predictions = open_image(run / "predictions" / "raw.zarr", "czyx")
    known = group["mask"] if "mask" in group else None  # where the truth is known
    per_slice = [
        pixel_errors_by_distance(
            cell_probability(predictions, z) > threshold,
            group["labels"][z],
            None if known is None else known[z],
        )
        for z in slices
    ]
    errors = pooled(per_slice)
    train = report["split"]["train"]
    truth = np.stack([group["labels"][z] for z in train])
    fine = FINE[np.argmax(pixel_fscores(probability(predictions, train), truth, FINE))]
    held = np.stack([group["labels"][z] for z in slices])
    fine_error = 1.0 - pixel_fscores(probability(predictions, slices), held, [fine])[0]
    recorded = report["results"]["val"]["unet"]["pixel_error_t_train"]
    if not np.isclose(pixel_error_beyond(errors, 0), recorded, atol=1e-6):
        raise SystemExit(f"{run}: pixel error {pixel_error_beyond(errors, 0)} != {recorded}")
    return {
        "run": run,
        "fold": run.name,
        "slices": slices,
        "threshold": threshold,
        "errors": errors,
        "fine": (float(fine), float(fine_error)),
        "slice_errors": [pixel_error_beyond(e, 0) for e in per_slice],
        "slice_density": [e["interface"] / e["positive"] for e in per_slice],
    }


def table(folds: list[dict[str, Any]]) -> str:
    header = [
        "fold",
        "t train",
        "pixel error",
        *(f"of it: {p}" for p in PARTS),
        "wrong px that are membrane called cell",
        "interface px / cell px",
        "t train, 0.01 grid: t, pixel error",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for f in folds:
        e = f["errors"]
        wrong = e["false_positive"].sum() + e["false_negative"].sum()
        row = [
            pixel_error_beyond(e, 0),
            *parts(e),
            e["false_positive"].sum() / wrong,
            e["interface"] / e["positive"],
        ]
        rows.append(row)
        cells = [f["fold"], f"{f['threshold']:.1f}", *(f"{v:.4f}" for v in row)]
        cells.append(f"{f['fine'][0]:.2f}, {f['fine'][1]:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > 1:
        mean, sd = np.mean(rows, axis=0), np.std(rows, axis=0, ddof=1)
        cells = ["**mean ± sd**", ""]
        cells += [f"{m:.4f} ± {s:.4f}" for m, s in zip(mean, sd, strict=True)]
        fine = np.array([f["fine"][1] for f in folds])
        cells.append(f"{fine.mean():.4f} ± {fine.std(ddof=1):.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def error_map(raw: np.ndarray, cell: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB of a slice: the raw image in grey, each wrong pixel in the colour of its part."""
    grey = raw.astype(np.float64) / max(float(raw.max()), 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    distance = np.minimum(interface_distance(labels)[0], 3)
    wrong = cell != (labels > 0)
    for d, colour in zip((1, 2, 3), COLOURS, strict=True):
        rgb[wrong & (distance == d)] = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    return rgb


def figure(folds: list[dict[str, Any]], group: zarr.Group, path: Path) -> None:
    fig = Figure(figsize=(16, 4.8), dpi=110)
    bars, scatter, picture = fig.subplots(1, 3, width_ratios=[1.1, 1, 0.9])
    bottom = np.zeros(len(folds))
    split = np.array([parts(f["errors"]) for f in folds]).T
    for part, colour, values in zip(PARTS, COLOURS, split, strict=True):
        bars.bar([f["fold"] for f in folds], values, bottom=bottom, color=colour, label=part)
        bottom += values
    for y, label, style in ((GOAL, "goal 0.045", "--"), (PAPER, "paper 0.0611 (test set)", ":")):
        bars.axhline(y, color="black", linestyle=style, linewidth=1, label=label)
    bars.set_ylabel("pixel error (threshold fixed on training slices)")
    bars.set_title("held-out pixel error by distance of each wrong pixel\nto the truth's interface")
    bars.legend(fontsize=8, loc="lower right")
    for f in folds:
        scatter.plot(f["slice_density"], f["slice_errors"], "o", label=f["fold"])
    x = np.concatenate([f["slice_density"] for f in folds])
    y = np.concatenate([f["slice_errors"] for f in folds])
    slope, intercept = np.polyfit(x, y, 1)
    grid = np.linspace(x.min(), x.max(), 2)
    scatter.plot(grid, slope * grid + intercept, "k-", linewidth=1)
    scatter.axhline(GOAL, color="black", linestyle="--", linewidth=1)
    scatter.set_xlabel("truth: cell pixels touching a membrane / cell pixels")
    scatter.set_ylabel("pixel error of the slice")
    scatter.set_title(f"one dot per held-out slice (Pearson r = {np.corrcoef(x, y)[0, 1]:.2f})")
    scatter.legend(fontsize=8, ncol=2)
    worst = max(folds, key=lambda f: max(f["slice_errors"]))
    k = int(np.argmax(worst["slice_errors"]))
    z = worst["slices"][k]
    predictions = open_image(worst["run"] / "predictions" / "raw.zarr", "czyx")
    cell = cell_probability(predictions, z) > worst["threshold"]
    picture.imshow(error_map(group["raw"][z], cell, group["labels"][z])[:256, :256])
    picture.set_title(
        f"slice {z} ({worst['fold']}, pixel error {worst['slice_errors'][k]:.4f}), top-left"
        "\n256 x 256: wrong pixels coloured by their part"
    )
    picture.axis("off")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished folds: RESULTS/<run>/fold-N")
    parser.add_argument("--data", type=Path, required=True, help="the dataset's Zarr group")
    parser.add_argument("--figure", type=Path, help="write the plot here (PNG)")
    args = parser.parse_args()
    group = zarr.open_group(str(args.data), mode="r")
    folds = [analyse_fold(run, group) for run in args.runs]
    print(table(folds))
    x = np.concatenate([f["slice_density"] for f in folds])
    y = np.concatenate([f["slice_errors"] for f in folds])
    print(
        f"\n{x.size} held-out slices: Pearson r of pixel error and interface density "
        f"{np.corrcoef(x, y)[0, 1]:.3f}; density {x.min():.4f} .. {x.max():.4f}, "
        f"pixel error {y.min():.4f} .. {y.max():.4f}"
    )
    if args.figure:
        figure(folds, group, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
