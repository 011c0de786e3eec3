"""The report of a run: the metrics against the paper's Table 1 and 2 (from ``metrics.json``,
written by :mod:`unetpipe.evaluate`), training curves, and overlays (raw | ground truth |
probability | instances | weights).

Figures are drawn with matplotlib's object interface (``matplotlib.figure.Figure``), so nothing
process-wide (the pyplot backend, its figure registry) is touched by importing or calling this.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from unetpipe.evaluate import PAPER, format_table, format_value, rows
from unetpipe.io import atomic_path, check_disjoint, open_data, read_log
from unetpipe.ngff import cell_probability, open_image, open_labels
from unetpipe.sections import ReportConfig
from unetpipe.splits import Split, resolve

log = logging.getLogger(__name__)


def log_columns(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The numeric columns of training-log rows; empty cells become NaN."""
    columns: dict[str, np.ndarray] = {}
    for name in rows[0] if rows else []:
        try:
            columns[name] = np.array(
                [float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows]
            )
        except (TypeError, ValueError):
            continue  # a non-numeric column (e.g. a time stamp)
    return columns


def curves_figure(
    rows: Sequence[dict[str, Any]], path: str | Path, dpi: int = 100, baseline: float | None = None
) -> None:
    """Training loss (per iteration and smoothed), the validation columns (``val_*``) and the
    learning rate against the iteration; ``baseline`` (the V_rand of the thresholding baseline on
    the validation slices) is drawn as a line."""
    columns = log_columns(rows)
    x = columns.get("iteration", np.arange(len(rows)))
    val = [k for k in columns if k.startswith("val_")]
    fig = Figure(figsize=(15, 4), dpi=dpi, layout="tight")
    axes = fig.subplots(1, 3)
    panels = [("loss (Eq. 1)", ["loss"]), ("validation", val), ("learning rate", ["lr"])]
    for ax, (title, keys) in zip(axes, panels, strict=True):
        ax.set(title=title, xlabel="iteration")
        shown = [k for k in keys if k in columns and np.isfinite(columns[k]).any()]
        for k in shown:
            ok = np.isfinite(columns[k])
            style = {"marker": "o", "ms": 3} if k.startswith("val_") else {}
            ax.plot(x[ok], columns[k][ok], label=k, lw=1, alpha=0.6 if k == "loss" else 1, **style)
            window = max(5, ok.sum() // 25)
            if k == "loss" and ok.sum() > 4 * window:
                smooth = np.convolve(columns[k][ok], np.ones(window) / window, mode="valid")
                ax.plot(x[ok][window - 1 :], smooth, color="k", lw=1.5, label=f"mean of {window}")
        if title == "validation" and baseline is not None:
            ax.axhline(baseline, color="gray", ls="--", label="V_rand, Otsu threshold")
            shown.append("baseline")
        if shown:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, f"no {title} logged", ha="center", va="center", color="gray")
    if "loss" in columns and np.nanmin(columns["loss"]) > 0:
        axes[0].set_yscale("log")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def metrics_figure(report: dict[str, Any], path: Path, dpi: int) -> None:
    """The metrics table as a figure; the better of u-net and baseline in bold."""
    results = report["results"]
    columns = [f"{n}\n{who}" for n in results for who in ("u-net", "baseline")] + ["paper\nu-net"]
    cells, bold, shown = [], [], rows(results)
    for key, _, lower in shown:
        row, flags = [], []
        for entry in results.values():
            pair = [entry[who].get(key) for who in ("unet", "baseline")]
            row += [format_value(key, v) for v in pair]
            better = None if None in pair else (min if lower else max)(pair)
            flags += [v is not None and v == better for v in pair]
        paper = PAPER["isbi2012"].get(key)
        cells.append(row + [format_value(key, paper)])
        bold.append(flags + [False])
    fig = Figure(figsize=(2.2 + 1.3 * len(columns), 0.45 * len(shown) + 1.4), dpi=dpi)
    ax = fig.subplots()
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        rowLabels=[label for _, label, _ in shown],
        colLabels=columns,
        loc="center",
        cellLoc="center",
    )
    table.scale(1, 1.6)
    for (r, c), cell in table.get_celld().items():
        if r == 0:
            cell.set_height(cell.get_height() * 1.5)
            cell.set_facecolor("#e8e8e8")
        elif c >= 0 and bold[r - 1][c]:
            cell.get_text().set_fontweight("bold")
    title = f"{report['dataset']}: U-Net vs thresholding baseline; paper = Table 1 (ISBI 2012)"
    for name, entry in results.items():
        for sequence, scores in entry.get("sequences", {}).items():
            paper = scores["paper_iou"]
            title += (
                f"\n{name} sequence {sequence}: IoU {scores['unet']['iou']:.4f}, "
                f"SEG {scores['unet']['seg']:.4f}"
                + ("" if paper is None else f" (paper, Table 2: IoU {paper:.4f})")
            )
    ax.set_title(title, fontsize=10)
    fig.savefig(path, bbox_inches="tight", pad_inches=0.2)


def overlay_figure(
    group: Any, prob: np.ndarray, instances: np.ndarray, z: int, path: Path, dpi: int
) -> None:
    """Slice ``z`` of ``raw``: raw | ground truth | cell probability | instances | weight map."""
    raw = np.asarray(group["raw"][z]).astype(np.float32)
    truth = np.asarray(group["labels"][z])
    panels = [
        ("raw", raw, {"cmap": "gray"}),
        ("ground truth", label_rgb(truth, raw), {}),
        ("cell probability", prob, {"cmap": "magma", "vmin": 0, "vmax": 1}),
        (f"instances ({len(np.unique(instances)) - 1})", label_rgb(instances, raw), {}),
    ]
    if "weights" in group:
        panels.append(("weight map (Eq. 2)", np.asarray(group["weights"][z]), {"cmap": "viridis"}))
    fig = Figure(figsize=(3.2 * len(panels), 3.6), dpi=dpi, layout="tight")
    axes = fig.subplots(1, len(panels))
    for ax, (title, image, style) in zip(axes, panels, strict=True):
        shown = ax.imshow(image, interpolation="nearest", **style)
        if title.startswith(("cell", "weight")):
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"slice {z}", fontsize=10)
    fig.savefig(path)


def label_rgb(labels: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Instances in random colours over the grey image, boundaries in white."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    grey = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.2, 1.0, (max(int(labels.max()), 1), 3))
    rgb = label2rgb(
        labels,
        grey,
        colors=colours[rng.permutation(len(colours))],
        alpha=0.45,
        bg_label=0,
        bg_color=None,
    )
    rgb[find_boundaries(labels, mode="inner")] = 1.0
    return rgb


def write_report(
    metrics_json: str | Path,
    data: str | Path,
    predictions: str | Path,
    segmentation: str | Path,
    train_log: str | Path,
    output: str | Path,
    cfg: ReportConfig | Mapping[str, Any] | None = None,
    split: Split | None = None,
) -> None:
    """The report folder: ``metrics.png``, ``curves.png``, ``overlay_<z>.png`` for the first
    validation slices (of ``split``, default the group's), and ``summary.txt`` (the table of
    :func:`unetpipe.evaluate.format_table`)."""
    params = ReportConfig.from_mapping(cfg)
    check_disjoint(output, metrics_json, data, predictions, segmentation, train_log)
    report = json.loads(Path(metrics_json).read_text())
    group = open_data(data)
    pred = open_image(predictions, "czyx")
    seg = open_labels(segmentation)
    dpi = int(params.dpi)
    with atomic_path(output) as tmp:
        tmp.mkdir()
        metrics_figure(report, tmp / "metrics.png", dpi)
        curves_figure(read_log(train_log), tmp / "curves.png", dpi)
        for z in (split or resolve(group))["val"][: params.overlays]:
            overlay_figure(
                group,
                cell_probability(pred, z),
                np.asarray(seg[z]),
                z,
                tmp / f"overlay_{z:03d}.png",
                dpi,
            )
        (tmp / "summary.txt").write_text(format_table(report["results"]) + "\n")
    log.info("report written to %s", output)
