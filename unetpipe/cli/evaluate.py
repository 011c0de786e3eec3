"""Sub-commands segment, evaluate, report and summary (unetpipe.segment, unetpipe.evaluate,
unetpipe.report)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from unetpipe.cli import add_overwrite
from unetpipe.config import choices, load_config
from unetpipe.evaluate import evaluate_run, summary
from unetpipe.io import open_data
from unetpipe.report import write_report
from unetpipe.segment import METHODS, MODES, RELIEFS, segment_stage
from unetpipe.splits import run_split


def _segment(args: argparse.Namespace) -> int:
    keys = ["threshold", "method", "relief", "min_distance", "min_size", "mode", "sigma"]
    keys += ["max_distance", "mask", "merge_threshold", "block", "bias", "stride", "mutex_block"]
    cfg = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.tune:
        if not args.data:
            raise ValueError("--tune needs --data, the dataset's data.zarr (labels, splits)")
        grid = dict(parse_grid(text) for text in args.grid or [])
        cfg["tune"] = {"enabled": True, "measure": args.measure, "grid": grid}
    segment_stage(
        args.predictions,
        args.output,
        cfg,
        args.threads,
        args.data,
        tune_slices=_slices(args.tune_slices) if args.tune_slices else None,
        tune_predictions=args.tune_predictions,
        image=args.image,
        overwrite=args.overwrite,
    )
    return 0


def parse_grid(text: str) -> tuple[str, list]:
    """``merge_threshold=0.4,0.5`` -> ("merge_threshold", [0.4, 0.5])."""
    key, equals, values = text.partition("=")
    if not (equals and values):
        raise ValueError(f"--grid {text!r}: write KEY=VALUE,VALUE,... (e.g. min_size=0,64)")
    return key, yaml.safe_load(f"[{values}]")


def _slices(text: str) -> list[int]:
    """``0-24,27`` -> [0, 1, ..., 24, 27]."""
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def _settings(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """The config (``--config``, else the defaults) and the split of ``--fold`` or of the
    config's ``dataset.val_slices``, as train takes it (else None: the group's)."""
    config = load_config(args.config)
    return config, run_split(open_data(args.data), config, args.fold)


def _evaluate(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    arrays = [a for a in ("raw", "test") if (run / "predictions" / f"{a}.zarr").exists()]
    if "raw" not in arrays:
        raise FileNotFoundError(f"{run}/predictions/raw.zarr: predict the raw array first")
    config, split = _settings(args)
    evaluate_run(
        args.data,
        {a: run / "predictions" / f"{a}.zarr" for a in arrays},
        {a: run / "segmentation" / f"{a}.zarr" for a in arrays},
        run / "metrics.json",
        config["evaluate"],
        split,
    )
    print(summary(run))
    return 0


def _report(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    config, split = _settings(args)
    write_report(
        run / "metrics.json",
        args.data,
        run / "predictions" / "raw.zarr",
        run / "segmentation" / "raw.zarr",
        run / "train" / "log.csv",
        run / "report",
        config["report"],
        split,
    )
    return 0


def _summary(args: argparse.Namespace) -> int:
    print(summary(args.run_dir))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="cell probabilities to an OME-Zarr label image",
        description="Unset options take the segment config's defaults (config/README.md).",
    )
    p.add_argument("predictions", help="(classes, z, y, x): OME-Zarr, Zarr array or ImageJ TIFF")
    p.add_argument(
        "output",
        help="OME-Zarr label image to write: beside the predictions (seg.ome.zarr) or inside "
        "them (PRED.ome.zarr/labels/cells); with --image an OME-Zarr image of that array holding "
        "the labels as labels/cells",
    )
    p.add_argument(
        "--image",
        help="the (z, y, x) image predicted (e.g. data.zarr/raw): written with the labels inside "
        "it, so that napari opens both from either path",
    )
    p.add_argument(
        "--method", choices=METHODS, help="components, watershed, agglomerate or mutex_watershed"
    )
    p.add_argument("--threshold", type=float, help="cell probability threshold (foreground)")
    p.add_argument("--min-size", type=int, help="smallest instance in pixels")
    p.add_argument("--relief", choices=RELIEFS, help="watershed relief: distance or probability")
    p.add_argument("--min-distance", type=int, help="watershed: least distance between seeds")
    p.add_argument("--mode", choices=MODES, help="agglomerate: slice by slice or in 3D")
    p.add_argument("--sigma", type=float, help="agglomerate: smoothing of the boundary map (px)")
    p.add_argument("--max-distance", type=int, help="agglomerate: cap of the distance relief")
    p.add_argument(
        "--mask",
        action=argparse.BooleanOptionalAction,
        help="agglomerate: pixels at most --threshold are background (cells on a background)",
    )
    p.add_argument("--merge-threshold", type=float, help="agglomerate: stop merging at this mean")
    p.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"), help="agglomerate block")
    p.add_argument("--bias", type=float, help="mutex_watershed: added to the long-range repulsion")
    p.add_argument("--stride", type=int, help="mutex_watershed: long-range edges every N px")
    p.add_argument(
        "--mutex-block",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="mutex_watershed, mode 3d: segment by overlapping blocks of this size",
    )
    p.add_argument("--tune", action="store_true", help="fix parameters on training slices first")
    p.add_argument("--data", help="--tune: the dataset's data.zarr (labels, splits, mask)")
    p.add_argument(
        "--tune-slices",
        help="--tune: slices such as 0-24 (default: the train split's gold-truth slices)",
    )
    p.add_argument("--tune-predictions", help="--tune: predictions of raw, if PREDICTIONS is not")
    p.add_argument(
        "--measure",
        choices=choices("segment.tune", "measure"),
        default="v_rand",
        help="--tune: score to maximise",
    )
    p.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2",
        help="--tune: values of one parameter to try (repeat per parameter; none given: the "
        "method's default grid)",
    )
    p.add_argument("--threads", type=int, default=1, help="Dask worker threads")
    add_overwrite(p)
    p.set_defaults(func=_segment)

    for name, func, text in [
        ("evaluate", _evaluate, "write RUN_DIR/metrics.json and print it"),
        ("report", _report, "write the figures of RUN_DIR/report from its metrics.json"),
    ]:
        p = subparsers.add_parser(name, help=text)
        p.add_argument("data", help="the dataset's data.zarr")
        p.add_argument("run_dir", help="results/<dataset>/<run>")
        p.add_argument("--config", help=f"workflow config file: its {name} and crossval sections")
        p.add_argument("--fold", help="the run's fold of the config's crossval section")
        p.set_defaults(func=func)

    p = subparsers.add_parser("summary", help="print a run's metrics and where its report is")
    p.add_argument("run_dir", help="results/<dataset>/<run>")
    p.set_defaults(func=_summary)
