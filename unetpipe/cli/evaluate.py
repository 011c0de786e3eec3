"""Sub-commands segment, evaluate, report and summary (unetpipe.segment, unetpipe.evaluate,
unetpipe.report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unetpipe.config import load_config
from unetpipe.evaluate import evaluate_run, summary
from unetpipe.io import open_data
from unetpipe.report import write_report
from unetpipe.segment import segment_zarr
from unetpipe.splits import resolve


def _segment(args: argparse.Namespace) -> int:
    cfg = {"threshold": args.threshold, "method": args.method, "min_size": args.min_size}
    segment_zarr(args.predictions, args.output, cfg, args.threads)
    return 0


def _settings(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """The config (``--config``, else the defaults) and the split of ``--fold`` (else None)."""
    config = load_config(args.config)
    split = resolve(open_data(args.data), config["crossval"], args.fold) if args.fold else None
    return config, split


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
    p = subparsers.add_parser("segment", help="cell probabilities (Zarr) to instances (Zarr)")
    p.add_argument("predictions", help="(classes, z, y, x) prediction Zarr")
    p.add_argument("output", help="(z, y, x) uint32 instance Zarr to write")
    p.add_argument("--threshold", type=float, default=0.5, help="cell probability threshold")
    p.add_argument("--method", choices=["components", "watershed"], default="components")
    p.add_argument("--min-size", type=int, default=16, help="smallest instance in pixels")
    p.add_argument("--threads", type=int, default=1)
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
