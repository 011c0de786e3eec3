"""``unetpipe weights`` and ``unetpipe augment``: weight maps (Eq. 2) and the augmented bank."""

from __future__ import annotations

import argparse
from pathlib import Path

from unetpipe.cli import add_overwrite
from unetpipe.config import choices, defaults, load_config


def _weights(args: argparse.Namespace) -> int:
    from unetpipe.weightmaps import write_weights

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
    from unetpipe.augment import augment_stage

    config = load_config(args.config)  # validated: a typo in any section is refused
    params = config["augment"]
    for key in ("tile", "bank_size", "shards", "seed"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    model = config["model"]
    model.update({k: getattr(args, k) for k in ("depth", "padding") if getattr(args, k)})
    for shard in [args.shard] if args.shard is not None else range(params["shards"]):
        out = Path(args.out) / f"shard-{shard}.zarr"
        augment_stage(args.data, out, shard, params, model, overwrite=args.overwrite)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    weights, augment, model = defaults("weights"), defaults("augment"), defaults("model")
    p = subparsers.add_parser("weights", help="add the weight map of Eq. 2 to a dataset's group")
    p.add_argument("data", help="the dataset's Zarr group, e.g. results/isbi2012/data.zarr")
    p.add_argument("--w0", type=float, default=weights["w0"], help="border weight w0 of Eq. 2")
    p.add_argument(
        "--sigma", type=float, default=weights["sigma"], help="border width sigma of Eq. 2, px"
    )
    p.add_argument(
        "--class-weights",
        choices=[*choices("weights", "class_weights"), "none"],
        default=weights["class_weights"] or "none",
        help="w_c of Eq. 2: inverse class frequency (balanced) or 1 everywhere (none)",
    )
    p.add_argument(
        "--separation-gap",
        type=int,
        default=weights["separation_gap"],
        help="background gap in px put between touching cells before the map (0 = off)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=weights["tolerance"],
        help="accuracy of the border term, relative to w0",
    )
    p.add_argument(
        "--mode",
        choices=choices("weights", "mode"),
        default=weights["mode"],
        help="slice by slice or 3D",
    )
    p.add_argument("--threads", type=int, default=1, help="processes computing slices")
    p.set_defaults(func=_weights)

    p = subparsers.add_parser("augment", help="precompute a bank of augmented tiles (Sec. 3.1)")
    p.add_argument("data", help="the dataset's Zarr group (with raw, labels, weights)")
    p.add_argument("out", help="folder for the shards, shard-<i>.zarr")
    p.add_argument(
        "--config", help="a workflow config file: its augment and model sections are used"
    )
    p.add_argument("--tile", type=int, help=f"input tile size (default {augment['tile']})")
    p.add_argument(
        "--bank-size", type=int, help=f"samples in the whole bank (default {augment['bank_size']})"
    )
    p.add_argument(
        "--shards", type=int, help=f"shards the bank is split into (default {augment['shards']})"
    )
    p.add_argument("--shard", type=int, help="write only this shard (default: all)")
    p.add_argument("--seed", type=int, help="sample i is a function of (seed, i) (default 0)")
    p.add_argument(
        "--depth", type=int, help=f"U-Net depth, sets the output size (default {model['depth']})"
    )
    p.add_argument(
        "--padding",
        choices=choices("model", "padding"),
        help=f"U-Net padding (default {model['padding']})",
    )
    add_overwrite(p)
    p.set_defaults(func=_augment)
