"""Evaluation of a run (Section 4): ``metrics.json`` with the measures of the paper's Table 1
(ISBI 2012) and Table 2 (Cell Tracking Challenge), next to a thresholding baseline.

Every measure comes from :mod:`unetpipe.metrics`. The baseline (Gaussian-blurred raw, polarity and
threshold chosen by pixel F1 on the training slices) shows what the network adds. Nothing is chosen
on the scored slices: thresholds are fixed on the training slices. Where the truth is not known
everywhere (array ``mask`` of the group, 0 = unknown, e.g. cells the gold truth left unlabelled),
those pixels are not scored. For the Cell Tracking Challenge (group attribute ``frames``) the
validation frames are also scored per sequence, as in Table 2: foreground IoU and the CTC SEG
measure; measures and choices use gold-truth frames only.

An affinity network (``model.target: affinities``) has no cell-probability channel: its map
measures (pixel error, V_rand and warping error of the thresholded map) score the mean of its
nearest-neighbour affinities (:func:`unetpipe.ngff.cell_region`), a cell map that is low on
membranes; its instance scores are those of its segmentation (e.g. the Mutex Watershed), the
measures to compare with a boundary network's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage

from unetpipe import metrics
from unetpipe.io import CheckedArray, atomic_path, check_disjoint, open_data, stored_digest
from unetpipe.ngff import ImageArray, cell_probability, open_image, open_labels, require_grid
from unetpipe.sections import EvaluateConfig
from unetpipe.splits import Split, consecutive_runs, gold, resolve

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
ROWS = [  # (key, label, lower is better); "t train" = threshold fixed on the training slices
    ("warping_error", "warping error (splits + mergers)", True),
    ("warping_error_t_train", "warping error, t train", True),
    ("pixel_error", "pixel error", True),
    ("pixel_error_t_train", "pixel error, t train", True),
    ("rand_error", "Rand error (1 - V_rand)", True),
    ("v_rand", "V_rand (thinned)", False),
    ("v_rand_t_train", "V_rand (thinned), t train", False),
    ("v_info", "V_info (thinned)", False),
    ("slice_v_rand", "mean slice V_rand", False),
    ("slice_v_rand_t_train", "mean slice V_rand, t train", False),
    ("instances_v_rand", "V_rand of the instances", False),
    ("instances_v_rand_thinned", "V_rand (thinned) of the instances", False),
    ("iou", "foreground IoU", False),
    ("seg", "SEG (CTC)", False),
    ("det", "DET (CTC)", False),
    ("instances_v_rand_3d", "V_rand of the instances, in 3D", False),
    ("seg_3d", "SEG (CTC), objects in 3D", False),
    ("det_3d", "DET (CTC), objects in 3D", False),
]
FIXED_THRESHOLDS = ("pixel_error", "v_rand", "slice_v_rand", "warping_error")
"""The measures scored also at a threshold fixed on the training slices (``<measure>_t_train``)."""


def _stack(array: zarr.Array | CheckedArray | ImageArray, slices: Sequence[int]) -> np.ndarray:
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
    (``<measure>_t_train``), which is what a user without ground truth gets. The ISBI protocol
    includes the warping error of Table 1 (:func:`unetpipe.metrics.warping_scores`)."""
    fscores = metrics.pixel_fscores(prob, truth, thresholds)
    slice_score, slice_threshold = metrics.slice_v_rand(prob, truth, thresholds)
    scores = {
        "pixel_error": 1.0 - float(fscores.max()),
        "pixel_error_threshold": float(thresholds[int(np.argmax(fscores))]),
        **metrics.isbi_scores(prob, truth, thresholds, thinning),
        **metrics.warping_scores(prob, truth, thresholds),
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
            "warping_error_t_train": metrics.warping_error(prob, truth, chosen["warping_error"])[
                "warping_error"
            ],
        }
    return scores


def choose_thresholds(
    prob: np.ndarray, truth: np.ndarray, thresholds: list[float], thinning: bool
) -> dict[str, float]:
    """Post-processing fixed on the training slices, never on the scored ones: for each measure of
    :data:`FIXED_THRESHOLDS` the threshold that scores best on ``prob`` against ``truth``."""
    scores = score_probability(prob, truth, thresholds, thinning)
    return {key: scores[f"{key}_threshold"] for key in FIXED_THRESHOLDS}


def _at_own_threshold(scores: dict[str, float]) -> dict[str, float]:
    """Scores of a single fixed threshold (the baseline's, chosen on the training slices), with
    the ``<measure>_t_train`` keys of :func:`score_probability`, which are the same values."""
    return scores | {f"{key}_t_train": scores[key] for key in FIXED_THRESHOLDS}


def score_instances(
    instances: np.ndarray,
    truth: np.ndarray,
    thinning: bool = False,
    known: np.ndarray | bool = True,
) -> dict[str, float]:
    """Instance measures of a (z, y, x) labelling, slices scored separately: V_rand and V_info
    (no thinning), CTC SEG and DET, foreground IoU, and the number of instances. ``thinning``
    adds ``instances_v_rand_thinned``: V_rand after the ISBI 2012 border thinning of both, the
    measure of the paper's Table 1 (which scores the thresholded map) applied to the instances,
    scored where the truth is ``known`` only (thinning grows the objects into unknown pixels)."""
    seg, ref = metrics.slice_unique(instances), metrics.slice_unique(truth)
    thinned = (
        {"instances_v_rand_thinned": metrics.thinned_v_rand(seg, ref, known)} if thinning else {}
    )
    return thinned | {
        "instances_v_rand": metrics.v_rand(seg, ref),
        "instances_v_info": metrics.v_info(seg, ref),
        "seg": metrics.seg_score(seg, ref),
        "det": metrics.det_score(seg, ref),
        "iou": metrics.foreground_iou(seg, ref),
        "instances": int(np.count_nonzero(np.bincount(seg.ravel())[1:])),
    }


def score_volume(
    instances: np.ndarray, truth: np.ndarray, slices: Sequence[int]
) -> dict[str, float]:
    """Measures of objects in 3D, for a segmentation made in 3D (``segment.mode: 3d``): the Cell
    Tracking Challenge's SEG and DET as it scores fully annotated 3D frames (a reference object
    and a segment are matched as volumes), and V_rand. Each run of consecutive scored ``slices``
    (the planes of ``instances`` and ``truth``, in that order) is one volume: no object spans two
    runs."""
    seg, ref = _volume_ids(instances, slices), _volume_ids(truth, slices)
    return {
        "instances_v_rand_3d": metrics.v_rand(seg, ref),
        "seg_3d": metrics.seg_score(seg, ref),
        "det_3d": metrics.det_score(seg, ref),
    }


def _volume_ids(labels: np.ndarray, slices: Sequence[int]) -> np.ndarray:
    """``labels`` with the ids of each run of consecutive ``slices`` made distinct from those of
    every other run."""
    plane = {int(z): i for i, z in enumerate(slices)}
    out, offset = np.zeros(labels.shape, np.int64), 0
    for start, stop in consecutive_runs(slices):
        planes = [plane[z] for z in range(start, stop)]
        run = labels[planes].astype(np.int64)
        out[planes] = np.where(run > 0, run + offset, 0)
        offset += int(run.max(initial=0))
    return out


def rows(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The :data:`ROWS` that some set of ``results`` (or the paper) has a value of."""
    return [
        row
        for row in ROWS
        if row[0] in PAPER["isbi2012"]
        or any(
            entry[who].get(row[0]) is not None
            for entry in results.values()
            for who in ("unet", "baseline")
        )
    ]


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
    the mean Jaccard index over all reference objects of those frames; ``det`` the CTC DET measure
    over them; ``per_frame`` has the three of each frame, the network's and the baseline's. As the
    CTC documents, ``man_seg`` objects are the reference and every other pixel is background: a
    segment matching no reference object costs nothing in SEG (the measure runs over reference
    objects) but counts as a false positive in DET and as false foreground in IoU.
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
            "per_frame": [
                {
                    "frame": int(frames[i]["frame"]),
                    **{
                        f"{who}_{key}": score(labels[i], truth[i])
                        for who, labels in (("unet", instances), ("baseline", baseline))
                        for key, score in (
                            ("seg", metrics.seg_score),
                            ("det", metrics.det_score),
                            ("iou", metrics.foreground_iou),
                        )
                    },
                }
                for i in index
            ],
            "paper_iou": PAPER["iou"].get(paper) if paper else None,
        }
        for sequence, index in sorted(members.items())
    }


def evaluate_run(
    data: str | Path,
    predictions: dict[str, str | Path],
    segmentations: dict[str, str | Path],
    output: str | Path,
    cfg: EvaluateConfig | Mapping[str, Any] | None = None,
    split: Split | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``: the validation slices of ``raw`` against ``labels``, and ``test``
    against ``test_labels`` when both it and its prediction exist; for each, the network's
    probabilities and instances and the thresholding baseline; for a Cell Tracking Challenge group
    (attribute ``frames``), :func:`score_sequences` of the validation frames under ``sequences``.
    Thresholds are also fixed on the (gold-truth) training slices of ``raw``
    (:func:`choose_thresholds`) and every set scored at them. ``cfg`` = the evaluate section;
    ``split`` = the run's training and validation slices (default: the group's ``splits``)."""
    params = EvaluateConfig.from_mapping(cfg)
    check_disjoint(output, data, *predictions.values(), *segmentations.values())
    thresholds = [float(t) for t in params.thresholds]
    group = open_data(data)
    raw_pred = open_image(predictions["raw"], "czyx")
    _check_input(raw_pred, group, "raw")  # before anything is computed
    split = split or resolve(group)
    fit = gold(group.attrs, split["train"])
    known = _known(group, fit)
    train_truth = np.where(known, _stack(group["labels"], fit), 0)
    baseline = fit_baseline(_stack(group["raw"], fit), train_truth, float(params.baseline_sigma))
    train_prob = np.stack([cell_probability(raw_pred, z) for z in fit])
    chosen = choose_thresholds(
        np.where(known, train_prob, 0), train_truth, thresholds, params.thinning
    )
    log.info("thresholds fixed on the training slices: %s", chosen)
    sets = [("val", "raw", "labels", split["val"])]
    if "test" in predictions and "test_labels" in group:
        sets.append(("test", "test", "test_labels", list(range(group["test"].shape[0]))))
    results: dict[str, Any] = {}
    for name, array, label_array, slices in sets:
        known = _known(group, slices) if array == "raw" else True
        truth = np.where(known, _stack(group[label_array], slices), 0)
        pred = open_image(predictions[array], "czyx")
        _check_input(pred, group, array)
        segmentation = open_labels(segmentations[array])
        require_grid(segmentation, group[array].shape, f"{group.path}/{array}")
        prob = np.where(known, np.stack([cell_probability(pred, z) for z in slices]), 0)
        instances = _stack(segmentation, slices)
        instances = np.where(known, instances, 0)
        base_prob = np.where(known, baseline_probability(_stack(group[array], slices), baseline), 0)
        base_instances = metrics.components(base_prob > baseline["threshold"])
        results[name] = {
            "array": array,
            "labels": label_array,
            "slices": [int(z) for z in slices],
            "unet": {
                **score_probability(prob, truth, thresholds, params.thinning, chosen),
                **score_instances(instances, truth, params.thinning, known),
            },
            "baseline": {
                **_at_own_threshold(
                    score_probability(base_prob, truth, [baseline["threshold"]], params.thinning)
                ),
                **score_instances(base_instances, truth, params.thinning, known),
            },
        }
        if segmentation.attrs.get("segment", {}).get("mode") == "3d":
            results[name]["unet"].update(score_volume(instances, truth, slices))
            results[name]["baseline"].update(score_volume(base_instances, truth, slices))
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
        "split": split,
        "evaluate": params.to_mapping(),
        "baseline": baseline,
        "thresholds_from_training": chosen,
        "results": results,
        "paper": PAPER,
    }
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _check_input(predictions: ImageArray, group: Any, array: str) -> None:
    """Refuse predictions that were not made from the group's ``array``: another extent, or
    another content than predict recorded (``input_sha256``, the stored input's digest)."""
    where = f"{group.path}/{array}"
    require_grid(predictions, group[array].shape, where)
    recorded = predictions.attrs.get("input_sha256")
    if recorded is None:
        log.warning("%s records no input digest: not checked against %s", predictions.path, where)
        return
    actual = stored_digest(group.path / array)
    if recorded != actual:
        source = predictions.attrs.get("input", {}).get("path", "another input")
        raise ValueError(
            f"{predictions.path}: predicted from {source} (sha256 {recorded[:12]}...), whose "
            f"content is not that of {where} (sha256 {actual[:12]}...): it scores another image; "
            f"predict {where} again"
        )


def _known(group: Any, slices: Sequence[int]) -> np.ndarray:
    """Where the truth of ``slices`` is known: the group's ``mask`` (1 = known), else everywhere.
    Unknown pixels are taken out of the truth and out of every prediction before scoring."""
    if "mask" not in group:
        return np.ones((len(slices), *group["labels"].shape[1:]), bool)
    return _stack(group["mask"], slices) > 0


def format_table(results: dict[str, Any]) -> str:
    """The metrics as a plain-text table: one row per measure, columns u-net / baseline per
    evaluated set, and the paper's u-net where Table 1 has the measure; for the Cell Tracking
    Challenge a second table, one row per sequence: IoU and SEG beside the paper's Table 2 IoU."""
    header = ["measure"]
    for name in results:
        header += [f"{name} u-net", f"{name} baseline"]
    header.append("paper u-net")
    lines = [header]
    for key, label, _ in rows(results):
        row = [label]
        for entry in results.values():
            row += [format_value(key, entry[who].get(key)) for who in ("unet", "baseline")]
        row.append(format_value(key, PAPER["isbi2012"].get(key)))
        lines.append(row)
    sequences = [
        [name, sequence, str(len(entry["frames"]))]
        + [
            format_value(key, entry[who].get(key))
            for key in ("iou", "seg", "det")
            for who in ("unet", "baseline")
        ]
        + ["-" if entry["paper_iou"] is None else f"{entry['paper_iou']:.4f}"]
        for name, result in results.items()
        for sequence, entry in result.get("sequences", {}).items()
    ]
    if not sequences:
        table2 = ", ".join(f"{k} {v}" for k, v in PAPER["iou"].items())
        return f"{_text_table(lines)}\npaper IoU (Table 2): {table2}"
    columns = ["set", "sequence", "frames", "IoU u-net", "IoU baseline", "SEG u-net"]
    columns += ["SEG baseline", "DET u-net", "DET baseline", "paper IoU"]
    return (
        f"{_text_table(lines)}\n\n"
        f"Cell Tracking Challenge per sequence (paper: Table 2, u-net IoU)\n"
        f"{_text_table([columns, *sequences])}"
    )


def format_value(key: str, value: float | None) -> str:
    """A table entry of measure ``key``: 4 decimals, 6 for the warping error (Table 1: 0.000353)."""
    if value is None:
        return "-"
    return f"{value:.6f}" if key.startswith("warping_error") else f"{value:.4f}"


def _text_table(lines: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


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


CROSSVAL_MEASURES = [  # (key, label); the u-net's and the baseline's, as evaluate_run writes them
    ("warping_error_t_train", "warping error (t train)"),
    ("pixel_error_t_train", "pixel error (t train)"),
    ("v_rand_t_train", "V_rand thinned (t train)"),
    ("slice_v_rand_t_train", "slice V_rand (t train)"),
    ("instances_v_rand", "V_rand of the instances"),
    ("instances_v_rand_thinned", "V_rand thinned of the instances"),
    ("seg", "SEG"),
    ("iou", "IoU"),
]


def summarize_folds(
    folds: dict[str, str | Path], output_json: str | Path, output_table: str | Path
) -> dict[str, Any]:
    """The validation scores of every fold of a cross-validation (their ``metrics.json``) and
    the mean and sample standard deviation over the folds, as JSON and as a Markdown table."""
    if len(folds) < 2:
        raise ValueError(f"a cross-validation summary needs at least 2 folds, got {list(folds)}")
    scores = {
        fold: {
            who: {
                k: json.loads(Path(path).read_text())["results"]["val"][who][k]
                for k, _ in CROSSVAL_MEASURES
            }
            for who in ("unet", "baseline")
        }
        for fold, path in folds.items()
    }
    stats: dict[str, Any] = {}
    for who in ("unet", "baseline"):
        values = {k: np.array([s[who][k] for s in scores.values()]) for k, _ in CROSSVAL_MEASURES}
        stats[who] = {
            "mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std(ddof=1)) for k, v in values.items()},
        }
    summary = {"folds": scores, **stats}
    header = ["fold", *(label for _, label in CROSSVAL_MEASURES)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for fold, entry in scores.items():
        cells = [format_value(k, entry["unet"][k]) for k, _ in CROSSVAL_MEASURES]
        lines.append(f"| {fold} | " + " | ".join(cells) + " |")
    for who, name in (("unet", "u-net"), ("baseline", "baseline")):
        cells = [
            f"{format_value(k, stats[who]['mean'][k])} ± {format_value(k, stats[who]['std'][k])}"
            for k, _ in CROSSVAL_MEASURES
        ]
        lines.append(f"| {name}, mean ± sd | " + " | ".join(cells) + " |")
    with atomic_path(output_json) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    with atomic_path(output_table) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    log.info("cross-validation over %d folds:\n%s", len(folds), "\n".join(lines))
    return summary
