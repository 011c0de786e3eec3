"""Evaluation of a run (``metrics.json``) and its report: the metrics against the paper's Table 1
and 2, training curves, and overlays (raw | ground truth | probability | instances | weights).

Every measure comes from :mod:`unetpipe.metrics`. Next to the network, a thresholding baseline
(Gaussian-blurred raw, polarity and threshold chosen by pixel F1 on the training slices) shows what
the network adds. For the Cell Tracking Challenge (group attribute ``frames``) the validation frames
are also scored per sequence, as in the paper's Table 2: foreground IoU and the CTC SEG measure.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import zarr
from scipy import ndimage

from unetpipe import metrics
from unetpipe.io import atomic_path, open_data, read_splits
from unetpipe.ngff import open_image
from unetpipe.params import merge_params
from unetpipe.segment import cell_probability

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

log = logging.getLogger(__name__)

PAPER = {
    "isbi2012": {  # Table 1, u-net: averaged over 7 rotated inputs, no post-processing
        "warping_error": 0.000353,
        "rand_error": 0.0382,
        "pixel_error": 0.0611,
    },
    "iou": {"PhC-U373": 0.9203, "DIC-HeLa": 0.7756},  # Table 2
}
CTC_DATASETS = {"phc-c2dh-u373": "PhC-U373", "dic-c2dh-hela": "DIC-HeLa"}  # name -> Table 2 row
EVALUATE_DEFAULTS = {
    "thresholds": metrics.ISBI_THRESHOLDS.tolist(),
    "thinning": True,
    "baseline_sigma": 2.0,
}
REPORT_DEFAULTS = {"overlays": 3, "dpi": 100}
ROWS = [  # (key, label, lower is better); "t train" = threshold fixed on the training slices
    ("pixel_error", "pixel error", True),
    ("pixel_error_t_train", "pixel error, t train", True),
    ("rand_error", "Rand error (1 - V_rand)", True),
    ("v_rand", "V_rand (thinned)", False),
    ("v_rand_t_train", "V_rand (thinned), t train", False),
    ("v_info", "V_info (thinned)", False),
    ("slice_v_rand", "mean slice V_rand", False),
    ("slice_v_rand_t_train", "mean slice V_rand, t train", False),
    ("iou", "foreground IoU", False),
    ("seg", "SEG (CTC)", False),
]


def _stack(array: zarr.Array, slices: list[int]) -> np.ndarray:
    return np.stack([np.asarray(array[z]) for z in slices])


def _blur(raw: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(raw.astype(np.float32), sigma=(0, sigma, sigma))


def baseline_probability(raw: np.ndarray, baseline: dict[str, Any]) -> np.ndarray:
    """The baseline's cell 'probability': blurred intensities of a (z, y, x) stack mapped
    linearly from [low, high] to [0, 1] (inverted when cells are dark)."""
    blurred = _blur(raw, baseline["sigma"])
    prob = np.clip((blurred - baseline["low"]) / (baseline["high"] - baseline["low"]), 0, 1)
    return 1.0 - prob if baseline["inverted"] else prob


def fit_baseline(raw: np.ndarray, labels: np.ndarray, sigma: float) -> dict[str, Any]:
    """Choose the baseline's intensity range (1st-99th percentile), polarity and threshold (step
    0.01, best pixel F1) on training slices."""
    low, high = (float(v) for v in np.percentile(_blur(raw, sigma), [1, 99]))
    baseline = {"sigma": sigma, "low": low, "high": max(high, low + 1e-6)}
    grid = np.round(np.arange(101) * 0.01, 2)
    best = (-1.0, False, 0.5)
    for inverted in (False, True):
        prob = baseline_probability(raw, {**baseline, "inverted": inverted})
        scores = metrics.pixel_fscores(prob, labels, grid)
        k = int(np.argmax(scores))
        best = max(best, (float(scores[k]), inverted, float(grid[k])))
    return {**baseline, "inverted": best[1], "threshold": best[2], "train_f1": best[0]}


def score_probability(
    prob: np.ndarray,
    truth: np.ndarray,
    thresholds: list[float],
    thinning: bool,
    chosen: dict[str, float] | None = None,
) -> dict[str, float]:
    """Pixel error, the ISBI 2012 protocol and the mean slice V_rand of a probability stack, each
    at its best threshold (``<measure>_threshold``) as the challenge scores them; with ``chosen``
    (:func:`choose_thresholds` of the training slices) also each at the threshold fixed there
    (``<measure>_t_train``), which is what a user without ground truth gets."""
    fscores = metrics.pixel_fscores(prob, truth, thresholds)
    slice_score, slice_threshold = metrics.slice_v_rand(prob, truth, thresholds)
    scores = {
        "pixel_error": 1.0 - float(fscores.max()),
        "pixel_error_threshold": float(thresholds[int(np.argmax(fscores))]),
        **metrics.isbi_scores(prob, truth, thresholds, thinning),
        "slice_v_rand": slice_score,
        "slice_v_rand_threshold": slice_threshold,
    }
    if chosen is not None:
        scores |= {
            "pixel_error_t_train": 1.0
            - float(metrics.pixel_fscores(prob, truth, [chosen["pixel_error"]])[0]),
            "v_rand_t_train": metrics.isbi_scores(prob, truth, [chosen["v_rand"]], thinning)[
                "v_rand"
            ],
            "slice_v_rand_t_train": metrics.slice_v_rand(prob, truth, [chosen["slice_v_rand"]])[0],
        }
    return scores


def choose_thresholds(
    prob: np.ndarray, truth: np.ndarray, thresholds: list[float], thinning: bool
) -> dict[str, float]:
    """Post-processing fixed on the training slices, never on the scored ones: for pixel error,
    V_rand and mean slice V_rand the threshold that scores best on ``prob`` against ``truth``."""
    scores = score_probability(prob, truth, thresholds, thinning)
    return {key: scores[f"{key}_threshold"] for key in ("pixel_error", "v_rand", "slice_v_rand")}


def _at_own_threshold(scores: dict[str, float]) -> dict[str, float]:
    """Scores of a single fixed threshold (the baseline's, chosen on the training slices), with
    the ``<measure>_t_train`` keys of :func:`score_probability`, which are the same values."""
    return scores | {
        f"{key}_t_train": scores[key] for key in ("pixel_error", "v_rand", "slice_v_rand")
    }


def score_instances(instances: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Instance measures of a (z, y, x) labelling, slices scored separately: V_rand and V_info
    (no thinning), CTC SEG, foreground IoU, and the number of instances."""
    seg, ref = metrics.slice_unique(instances), metrics.slice_unique(truth)
    return {
        "instances_v_rand": metrics.v_rand(seg, ref),
        "instances_v_info": metrics.v_info(seg, ref),
        "seg": metrics.seg_score(seg, ref),
        "iou": metrics.foreground_iou(seg, ref),
        "instances": int(np.count_nonzero(np.bincount(seg.ravel())[1:])),
    }


def table2_dataset(attrs: dict[str, Any]) -> str | None:
    """The paper's Table 2 row of a Zarr group ("PhC-U373", "DIC-HeLa"), found by the Cell Tracking
    Challenge dataset name in its ``dataset`` or ``source`` attributes; None for other data."""
    text = json.dumps([attrs.get("dataset"), attrs.get("source")]).lower()
    return next((row for name, row in CTC_DATASETS.items() if name in text), None)


def score_sequences(
    instances: np.ndarray,
    baseline: np.ndarray,
    truth: np.ndarray,
    frames: list[dict[str, Any]],
    paper: str | None = None,
) -> dict[str, Any]:
    """Table 2's measures per Cell Tracking Challenge sequence: :func:`score_instances` of the
    network's and the baseline's instances on each sequence's frames (``frames[i]`` = the
    ``{"sequence", "frame"}`` of slice i of the stacks), with the paper's IoU of row ``paper``.

    ``iou`` is the foreground IoU pooled over the sequence's frames; ``seg`` is the CTC SEG measure,
    the mean Jaccard index over all reference objects of those frames. As the CTC documents,
    ``man_seg`` objects are the reference and every other pixel is background: a segment matching
    no reference object costs nothing in SEG (the measure runs over reference objects) but counts
    as false foreground in IoU.
    """
    if len({len(frames), len(instances), len(baseline), len(truth)}) != 1:
        raise ValueError(
            f"{len(frames)} frames for stacks of {len(instances)}, {len(baseline)} and "
            f"{len(truth)} slices: need one frame per slice"
        )
    members: dict[str, list[int]] = {}
    for i, frame in enumerate(frames):
        members.setdefault(str(frame["sequence"]), []).append(i)
    return {
        sequence: {
            "frames": [int(frames[i]["frame"]) for i in index],
            "unet": score_instances(instances[index], truth[index]),
            "baseline": score_instances(baseline[index], truth[index]),
            "paper_iou": PAPER["iou"].get(paper) if paper else None,
        }
        for sequence, index in sorted(members.items())
    }


def evaluate_run(
    data: str | Path,
    predictions: dict[str, str | Path],
    segmentations: dict[str, str | Path],
    output: str | Path,
    cfg: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``: the validation slices of ``raw`` against ``labels``, and ``test``
    against ``test_labels`` when both it and its prediction exist; for each, the network's
    probabilities and instances and the thresholding baseline; for a Cell Tracking Challenge group
    (attribute ``frames``), :func:`score_sequences` of the validation frames under ``sequences``.
    Thresholds are also fixed on the training slices of ``raw`` (:func:`choose_thresholds`) and
    every set scored at them. ``cfg`` = the evaluate section."""
    params = merge_params("evaluate", EVALUATE_DEFAULTS, cfg)
    thresholds = [float(t) for t in params["thresholds"]]
    group = open_data(data)
    splits = read_splits(group)
    train_truth = _stack(group["labels"], splits["train"])
    baseline = fit_baseline(
        _stack(group["raw"], splits["train"]),
        train_truth,
        float(params["baseline_sigma"]),
    )
    raw_pred = open_image(predictions["raw"], "czyx")
    chosen = choose_thresholds(
        np.stack([cell_probability(raw_pred, z) for z in splits["train"]]),
        train_truth,
        thresholds,
        params["thinning"],
    )
    log.info("thresholds fixed on the training slices: %s", chosen)
    sets = [("val", "raw", "labels", splits["val"])]
    if "test" in predictions and "test_labels" in group:
        sets.append(("test", "test", "test_labels", list(range(group["test"].shape[0]))))
    results: dict[str, Any] = {}
    for name, array, label_array, slices in sets:
        truth = _stack(group[label_array], slices)
        pred = open_image(predictions[array], "czyx")
        prob = np.stack([cell_probability(pred, z) for z in slices])
        instances = _stack(open_image(segmentations[array]), slices)
        base_prob = baseline_probability(_stack(group[array], slices), baseline)
        base_instances = metrics.components(base_prob > baseline["threshold"])
        results[name] = {
            "array": array,
            "labels": label_array,
            "slices": [int(z) for z in slices],
            "unet": {
                **score_probability(prob, truth, thresholds, params["thinning"], chosen),
                **score_instances(instances, truth),
            },
            "baseline": {
                **_at_own_threshold(
                    score_probability(base_prob, truth, [baseline["threshold"]], params["thinning"])
                ),
                **score_instances(base_instances, truth),
            },
        }
        if name == "val" and "frames" in group.attrs:
            results[name]["sequences"] = score_sequences(
                instances,
                base_instances,
                truth,
                [group.attrs["frames"][z] for z in slices],
                table2_dataset(group.attrs),
            )
        log.info("%s: %s", name, format_table({name: results[name]}))
    report = {
        "dataset": group.attrs.get("dataset", Path(data).parent.name),
        "evaluate": params,
        "baseline": baseline,
        "thresholds_from_training": chosen,
        "results": results,
        "paper": PAPER,
    }
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_table(results: dict[str, Any]) -> str:
    """The metrics as a plain-text table: one row per measure, columns u-net / baseline per
    evaluated set, and the paper's u-net where Table 1 has the measure; for the Cell Tracking
    Challenge a second table, one row per sequence: IoU and SEG beside the paper's Table 2 IoU."""
    header = ["measure"]
    for name in results:
        header += [f"{name} u-net", f"{name} baseline"]
    header.append("paper u-net")
    lines = [header]
    for key, label, _ in ROWS:
        row = [label]
        for entry in results.values():
            row += [
                f"{entry[who][key]:.4f}" if key in entry[who] else "-"
                for who in ("unet", "baseline")
            ]
        paper = PAPER["isbi2012"].get(key)
        row.append("-" if paper is None else f"{paper:.4f}")
        lines.append(row)
    sequences = [
        [name, sequence, str(len(entry["frames"]))]
        + [f"{entry[who][key]:.4f}" for key in ("iou", "seg") for who in ("unet", "baseline")]
        + ["-" if entry["paper_iou"] is None else f"{entry['paper_iou']:.4f}"]
        for name, result in results.items()
        for sequence, entry in result.get("sequences", {}).items()
    ]
    if not sequences:
        table2 = ", ".join(f"{k} {v}" for k, v in PAPER["iou"].items())
        return f"{_text_table(lines)}\npaper IoU (Table 2): {table2}; warping error is not computed"
    columns = ["set", "sequence", "frames", "IoU u-net", "IoU baseline", "SEG u-net"]
    columns += ["SEG baseline", "paper IoU"]
    return (
        f"{_text_table(lines)}\nwarping error is not computed\n\n"
        f"Cell Tracking Challenge per sequence (paper: Table 2, u-net IoU)\n"
        f"{_text_table([columns, *sequences])}"
    )


def _text_table(lines: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """The numeric columns of the training log (CSV with a header); empty cells become NaN."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, np.ndarray] = {}
    for name in rows[0] if rows else []:
        try:
            columns[name] = np.array([float(r[name]) if r[name] else np.nan for r in rows])
        except (TypeError, ValueError):
            continue  # a non-numeric column (e.g. a time stamp)
    return columns


def curves_figure(log_csv: str | Path, path: Path, dpi: int) -> None:
    """Training loss (raw and smoothed), learning rate and the validation columns (``val_*``)
    against the iteration."""
    columns = read_log(log_csv)
    x = columns.get("iteration", np.arange(len(next(iter(columns.values()), []))))
    val = [k for k in columns if k.startswith("val_")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=dpi)
    panels = [("loss", ["loss"]), ("validation", val), ("learning rate", ["lr"])]
    for ax, (title, keys) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        shown = [k for k in keys if k in columns and np.isfinite(columns[k]).any()]
        for k in shown:
            ok = np.isfinite(columns[k])
            style = {"marker": "o", "ms": 3} if k.startswith("val_") else {}
            ax.plot(x[ok], columns[k][ok], label=k, lw=1, **style)
            window = max(5, ok.sum() // 25)
            if k == "loss" and ok.sum() > 4 * window:
                smooth = np.convolve(columns[k][ok], np.ones(window) / window, mode="valid")
                ax.plot(x[ok][window - 1 :], smooth, color="k", lw=1.5, label=f"mean of {window}")
        if shown:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        else:
            ax.text(
                0.5,
                0.5,
                f"no {title} in {Path(log_csv).name}",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="gray",
            )
    if "loss" in columns and np.nanmin(columns["loss"]) > 0:
        axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metrics_figure(report: dict[str, Any], path: Path, dpi: int) -> None:
    """The metrics table as a figure; the better of u-net and baseline in bold."""
    results = report["results"]
    columns = [f"{n}\n{who}" for n in results for who in ("u-net", "baseline")] + ["paper\nu-net"]
    cells, bold = [], []
    for key, _, lower in ROWS:
        row, flags = [], []
        for entry in results.values():
            pair = [entry[who].get(key) for who in ("unet", "baseline")]
            row += ["-" if v is None else f"{v:.4f}" for v in pair]
            better = None if None in pair else (min if lower else max)(pair)
            flags += [v is not None and v == better for v in pair]
        paper = PAPER["isbi2012"].get(key)
        cells.append(row + ["-" if paper is None else f"{paper:.4f}"])
        bold.append(flags + [False])
    fig, ax = plt.subplots(figsize=(2.2 + 1.3 * len(columns), 0.45 * len(ROWS) + 1.4), dpi=dpi)
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        rowLabels=[label for _, label, _ in ROWS],
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
    plt.close(fig)


def overlay_figure(
    group: zarr.Group, prob: np.ndarray, instances: np.ndarray, z: int, path: Path, dpi: int
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
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), dpi=dpi)
    for ax, (title, image, style) in zip(axes, panels, strict=True):
        shown = ax.imshow(image, interpolation="nearest", **style)
        if title.startswith(("cell", "weight")):
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"slice {z}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
    cfg: dict[str, Any] | None = None,
) -> None:
    """The report folder: ``metrics.png``, ``curves.png``, ``overlay_<z>.png`` for the first
    validation slices, and ``summary.txt`` (the table of :func:`format_table`)."""
    params = merge_params("report", REPORT_DEFAULTS, cfg)
    report = json.loads(Path(metrics_json).read_text())
    group = open_data(data)
    pred = open_image(predictions, "czyx")
    seg = open_image(segmentation)
    dpi = int(params["dpi"])
    with atomic_path(output) as tmp:
        tmp.mkdir()
        metrics_figure(report, tmp / "metrics.png", dpi)
        curves_figure(train_log, tmp / "curves.png", dpi)
        for z in read_splits(group)["val"][: params["overlays"]]:
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


def summary(run_dir: str | Path) -> str:
    """The metrics table of a run and where its report is."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics yet (run the workflow's evaluate rule)")
    report = json.loads(path.read_text())
    text = f"{report['dataset']} / {run_dir.name}\n{format_table(report['results'])}"
    folder, html = run_dir / "report", run_dir / "report.html"
    where = f"figures: {folder.resolve()}" if folder.is_dir() else "figures: not built yet"
    if html.is_file():
        return f"{text}\n{where}\nreport: {html.resolve()}"
    return f"{text}\n{where}\nHTML report: snakemake --report {html} --configfile <config>"
