"""``unetpipe train``: train the U-Net on a dataset's Zarr group (Section 3), as rule ``train``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import yaml

from unetpipe.config import load_config

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    from unetpipe.io import open_data
    from unetpipe.splits import run_split
    from unetpipe.train import train

    config = load_config(args.config)
    split = run_split(open_data(args.data), config, args.fold)
    if split is not None and not args.fold:
        log.info("dataset.val_slices of %s applied: %s", args.config, split)
    _unused_dataset_keys(args.config)
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


def _unused_dataset_keys(path: str | None) -> None:
    """Say which ``dataset`` keys of the config file train cannot apply: they describe how the
    group was made (synth, convert), which train does not redo."""
    if path is None:
        return
    given = (yaml.safe_load(Path(path).read_text()) or {}).get("dataset") or {}
    unused = sorted(set(given) - {"val_slices"})
    if unused:
        log.info(
            "%s: dataset keys %s describe how the group was made (synth, convert): train takes "
            "the group as it is (of the dataset section only val_slices applies)",
            path,
            unused,
        )


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
        "sections and dataset.val_slices (default: every default of the schema)",
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
