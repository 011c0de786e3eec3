"""``unetpipe train``: train the U-Net on a dataset's Zarr group (Section 3), as rule ``train``."""

from __future__ import annotations

import argparse
from typing import Any

from unetpipe.config import load_config


def _run(args: argparse.Namespace) -> int:
    from unetpipe.io import open_data
    from unetpipe.splits import resolve
    from unetpipe.train import train

    config = load_config(args.config)
    split = resolve(open_data(args.data), config["crossval"], args.fold) if args.fold else None
    train(
        args.data,
        args.run_dir,
        config["train"],
        config["model"],
        config["augment"],
        bank=args.bank,
        threads=args.threads,
        split=split,
    )
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the U-Net on a dataset (weighted loss of Eq. 1, SGD, checkpoints, resume)",
        description="Train on the training slices of a dataset's Zarr group; write "
        "RUN_DIR/model.pt and RUN_DIR/train/{log.csv,curves.png}; resume from "
        "RUN_DIR/checkpoints/last.pt when the settings and the data are unchanged.",
    )
    parser.add_argument("data", help="the dataset's Zarr group (results/<dataset>/data.zarr)")
    parser.add_argument("run_dir", help="the run folder (results/<dataset>/<run>)")
    parser.add_argument(
        "--config",
        help="workflow config file (config/*.yaml): its train, model, augment and crossval "
        "sections (default: every default of the schema)",
    )
    parser.add_argument(
        "--fold",
        help="train on this fold of the config's crossval section (e.g. fold-2, val-01) instead "
        "of the group's own split",
    )
    parser.add_argument(
        "--bank", nargs="*", default=[], help="augmented bank shards (with train.data: bank)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.set_defaults(func=_run)
