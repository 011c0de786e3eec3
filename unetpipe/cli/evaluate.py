"""Sub-commands segment, evaluate, report and summary (unetpipe.segment, unetpipe.report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unetpipe.report import evaluate_run, summary, write_report
from unetpipe.segment import segment_zarr


def _segment(args: argparse.Namespace) -> int:
    cfg = {"threshold": args.threshold, "method": args.method, "min_size": args.min_size}
    segment_zarr(args.predictions, args.output, cfg, args.threads)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    arrays = [a for a in ("raw", "test") if (run / "predictions" / f"{a}.zarr").exists()]
    if "raw" not in arrays:
        raise FileNotFoundError(f"{run}/predictions/raw.zarr: predict the raw array first")
    evaluate_run(
        args.data,
        {a: run / "predictions" / f"{a}.zarr" for a in arrays},
        {a: run / "segmentation" / f"{a}.zarr" for a in arrays},
        run / "metrics.json",
    )
    print(summary(run))
    return 0


def _report(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    write_report(
        run / "metrics.json",
        args.data,
        run / "predictions" / "raw.zarr",
        run / "segmentation" / "raw.zarr",
        run / "train" / "log.csv",
        run / "report",
    )
    return 0


def _summary(args: argparse.Namespace) -> int:
    print(summary(args.run_dir))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("segment", help="cell probabilities to an OME-Zarr label image")
    p.add_argument("predictions", help="(classes, z, y, x): OME-Zarr, Zarr array or ImageJ TIFF")
    p.add_argument(
        "output",
        help="OME-Zarr label image to write: beside the predictions (seg.ome.zarr) or inside "
        "them (PRED.ome.zarr/labels/cells)",
    )
    p.add_argument("--threshold", type=float, default=0.5, help="cell probability threshold")
    p.add_argument("--method", choices=["components", "watershed"], default="components")
    p.add_argument("--min-size", type=int, default=16, help="smallest instance in pixels")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_segment)

    for name, func, text in [
        ("evaluate", _evaluate, "write RUN_DIR/metrics.json (default settings) and print it"),
        ("report", _report, "write the figures of RUN_DIR/report from its metrics.json"),
    ]:
        p = subparsers.add_parser(name, help=text)
        p.add_argument("data", help="the dataset's data.zarr")
        p.add_argument("run_dir", help="results/<dataset>/<run>")
        p.set_defaults(func=func)

    p = subparsers.add_parser("summary", help="print a run's metrics and where its report is")
    p.add_argument("run_dir", help="results/<dataset>/<run>")
    p.set_defaults(func=_summary)
