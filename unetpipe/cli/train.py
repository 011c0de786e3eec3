"""``unetpipe train``: train the U-Net on a dataset's Zarr group (Section 3), as rule ``train``."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class: Any) -> Any:
    """A validator that also fills in every missing key's ``default`` (as Snakemake's validate)."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator: Any, props: dict, instance: Any, schema: dict) -> Any:
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    return validators.extend(validator_class, {"properties": properties})


def load_config(path: str | Path | None) -> dict[str, Any]:
    """A workflow configuration file validated against the schema, with its defaults filled in."""
    config = {}
    if path is not None:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    with SCHEMA.open() as f:
        schema = yaml.safe_load(f)
    errors = list(_with_defaults(Draft202012Validator)(schema).iter_errors(config))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path)
        raise ValueError(f"{path}: {where}: {errors[0].message}")
    return config


def _run(args: argparse.Namespace) -> int:
    from unetpipe.train import train

    config = load_config(args.config)
    train(
        args.data,
        args.run_dir,
        config["train"],
        config["model"],
        config["augment"],
        bank=args.bank,
        threads=args.threads,
    )
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the U-Net on a dataset (weighted loss of Eq. 1, SGD, checkpoints, resume)",
        description="Train on the training slices of a dataset's Zarr group; write "
        "RUN_DIR/model.pt and RUN_DIR/train/{log.csv,curves.png}; resume from "
        "RUN_DIR/checkpoints/last.pt.",
    )
    parser.add_argument("data", help="the dataset's Zarr group (results/<dataset>/data.zarr)")
    parser.add_argument("run_dir", help="the run folder (results/<dataset>/<run>)")
    parser.add_argument(
        "--config", help="workflow config file (config/*.yaml): its train, model, augment sections"
    )
    parser.add_argument("--bank", nargs="*", default=[], help="bank shards (with train.data: bank)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.set_defaults(func=_run)
