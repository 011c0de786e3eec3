"""``unetpipe weights`` and ``unetpipe augment``: weight maps (Eq. 2) and the augmented bank."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from unetpipe.augment import DEFAULT_PARAMS, write_bank
from unetpipe.model import output_size
from unetpipe.weights import write_weights


def _weights(args: argparse.Namespace) -> int:
    class_weights = None if args.class_weights == "none" else args.class_weights
    params = {
        "w0": args.w0,
        "sigma": args.sigma,
        "class_weights": class_weights,
        "separation_gap": args.separation_gap,
        "tolerance": args.tolerance,
        "mode": args.mode,
    }
    write_weights(args.data, params, threads=args.threads)
    return 0


def _augment(args: argparse.Namespace) -> int:
    config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    params = dict(config.get("augment") or {})
    for key in ("tile", "bank_size", "shards", "seed"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    tile = params.get("tile", DEFAULT_PARAMS["tile"])
    n_shards = params.get("shards", DEFAULT_PARAMS["shards"])
    model = {"depth": 5, "padding": "valid", **(config.get("model") or {})}
    model.update({k: getattr(args, k) for k in ("depth", "padding") if getattr(args, k)})
    out = output_size(tile, model["depth"], model["padding"])
    for shard in [args.shard] if args.shard is not None else range(n_shards):
        write_bank(
            args.data,
            Path(args.out) / f"shard-{shard}.zarr",
            shard=shard,
            n_shards=n_shards,
            params=params,
            input_size=tile,
            output_size=out,
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("weights", help="add the weight map of Eq. 2 to a dataset's group")
    p.add_argument("data", help="the dataset's Zarr group, e.g. results/isbi2012/data.zarr")
    p.add_argument("--w0", type=float, default=10.0, help="border weight w0 (default 10)")
    p.add_argument("--sigma", type=float, default=5.0, help="border width sigma, px (default 5)")
    p.add_argument(
        "--class-weights", choices=["balanced", "none"], default="balanced", help="w_c of Eq. 2"
    )
    p.add_argument(
        "--separation-gap", type=int, default=0, help="background gap put between touching cells"
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="accuracy of the border term/w0")
    p.add_argument("--mode", choices=["2d", "3d"], default="2d", help="slice by slice or 3D")
    p.add_argument("--threads", type=int, default=1, help="processes computing slices")
    p.set_defaults(func=_weights)

    p = subparsers.add_parser("augment", help="precompute a bank of augmented tiles (Sec. 3.1)")
    p.add_argument("data", help="the dataset's Zarr group (with raw, labels, weights)")
    p.add_argument("out", help="folder for the shards, shard-<i>.zarr")
    p.add_argument(
        "--config", help="a workflow config file: its augment and model sections are used"
    )
    p.add_argument("--tile", type=int, help=f"input tile size (default {DEFAULT_PARAMS['tile']})")
    p.add_argument("--bank-size", type=int, help="samples in the whole bank")
    p.add_argument("--shards", type=int, help="shards the bank is split into")
    p.add_argument("--shard", type=int, help="write only this shard (default: all)")
    p.add_argument("--seed", type=int, help="sample i is a function of (seed, i)")
    p.add_argument("--depth", type=int, help="U-Net depth, sets the output size (default 5)")
    p.add_argument("--padding", choices=["valid", "same"], help="U-Net padding (default valid)")
    p.set_defaults(func=_augment)
