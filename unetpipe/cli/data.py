"""``unetpipe download``, ``unetpipe convert`` and ``unetpipe synth``: getting the data."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from unetpipe.cli import add_overwrite
from unetpipe.config import defaults
from unetpipe.datasets import REGISTRY, UNLABELLED, convert, download_dataset, provenance
from unetpipe.synthetic import write_synthetic

log = logging.getLogger(__name__)


def _download(args: argparse.Namespace) -> int:
    path = download_dataset(args.dataset, args.root, args.url, args.sha256)
    log.info("downloaded %s", path)
    return 0


def _convert(args: argparse.Namespace) -> int:
    convert(
        args.input,
        args.out,
        dataset=args.name or args.source,
        val_slices=args.val_slices,
        voxel_size=args.voxel_size,
        provenance=provenance(args.source, args.url, args.sha256),
        labels=args.labels,
        sequences=args.sequences,
        silver_truth=args.silver_truth,
        unlabelled=args.unlabelled,
        overwrite=args.overwrite,
    )
    return 0


def label_convention(text: str) -> str | dict[str, Any]:
    """``--labels``: ``instances``, ``foreground=V`` or ``threshold=T`` -> dataset.labels."""
    key, equals, value = text.partition("=")
    if text == "instances":
        return text
    if equals and key in ("foreground", "threshold"):
        try:
            return {"kind": "binary", key: float(value)}
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(
        f"{text!r}: give instances, foreground=V (binary, cells = V) or threshold=T (binary, "
        "cells >= T)"
    )


def _synth(args: argparse.Namespace) -> int:
    write_synthetic(
        args.out,
        n_slices=args.n_slices,
        shape=args.shape,
        test_slices=args.test_slices,
        test_shape=args.test_shape,
        cell_size=args.cell_size,
        membrane_width=args.membrane_width,
        noise=args.noise,
        seed=args.seed,
        val_slices=args.val_slices,
        voxel_size=args.voxel_size,
        dataset=args.name,
        overwrite=args.overwrite,
    )
    return 0


def _common(parser: argparse.ArgumentParser, dataset: dict) -> None:
    parser.add_argument(
        "--val-slices",
        type=int,
        nargs="*",
        default=dataset["val_slices"],
        help="validation slices (default: the last 20%%, of those with gold truth)",
    )
    parser.add_argument(
        "--voxel-size",
        type=float,
        nargs=3,
        default=dataset["voxel_size"],
        metavar=("Z", "Y", "X"),
        help="voxel size recorded with the data (used by 3D weight maps)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    dataset, synth = defaults("dataset"), defaults("synth")
    p = subparsers.add_parser("download", help="download a dataset, sha256-verified, resumable")
    p.add_argument("dataset", choices=sorted(REGISTRY), help="the registry entry")
    p.add_argument("--root", required=True, help="folder to download to (<root>/<dataset>.zip)")
    p.add_argument("--url", help="download from this mirror (http or https) instead")
    p.add_argument("--sha256", help="expected sha256 instead of the registry's")
    p.set_defaults(func=_download)

    p = subparsers.add_parser("convert", help="a downloaded zip or local folder -> Zarr group")
    p.add_argument("source", choices=[*sorted(REGISTRY), "local"], help="where the data came from")
    p.add_argument("input", help="the downloaded zip, or a folder (ISBI TIFF/PNG or CTC layout)")
    p.add_argument("out", help="the Zarr group to write, e.g. results/isbi2012/data.zarr")
    p.add_argument("--name", help="dataset name recorded in the group (default: source)")
    p.add_argument("--url", help="the URL the archive came from (recorded)")
    p.add_argument("--sha256", help="the expected sha256 (recorded)")
    p.add_argument(
        "--labels",
        type=label_convention,
        default=dataset["labels"],
        metavar="instances|foreground=V|threshold=T",
        help="what label values mean (dataset.labels): instance ids, a binary mask with cells = "
        "V, or cells >= T (default: 0 and one value = binary, one region per value = instances, "
        "anything else refused)",
    )
    p.add_argument(
        "--sequences",
        nargs="*",
        default=dataset["sequences"],
        help="Cell Tracking Challenge: convert only these sequences (default: all)",
    )
    p.add_argument(
        "--silver-truth",
        action="store_true",
        help="Cell Tracking Challenge: also the frames with silver truth only (<seq>_ST/SEG)",
    )
    p.add_argument(
        "--unlabelled",
        choices=UNLABELLED,
        default=dataset["unlabelled"],
        help="cells the gold truth leaves unlabelled (seen in the silver truth): ignored, or "
        "background as the masks say",
    )
    _common(p, dataset)
    add_overwrite(p)
    p.set_defaults(func=_convert)

    p = subparsers.add_parser("synth", help="write the built-in synthetic EM-like dataset")
    p.add_argument("out", help="the Zarr group to write, e.g. results/synthetic/data.zarr")
    p.add_argument("--name", default="synthetic", help="dataset name recorded in the group")
    p.add_argument("--n-slices", type=int, default=synth["n_slices"], help="labelled slices")
    p.add_argument(
        "--shape",
        type=int,
        nargs=2,
        default=synth["shape"],
        metavar=("Y", "X"),
        help="size of a labelled slice",
    )
    p.add_argument(
        "--test-slices", type=int, default=synth["test_slices"], help="slices of the test volume"
    )
    p.add_argument(
        "--test-shape",
        type=int,
        nargs=2,
        default=synth["test_shape"],
        metavar=("Y", "X"),
        help="size of a test slice",
    )
    p.add_argument(
        "--cell-size", type=float, default=synth["cell_size"], help="mean cell diameter, px"
    )
    p.add_argument(
        "--membrane-width",
        type=float,
        default=synth["membrane_width"],
        help="membrane thickness, px",
    )
    p.add_argument(
        "--noise", type=float, default=synth["noise"], help="noise std (intensities 0..1)"
    )
    p.add_argument("--seed", type=int, default=synth["seed"], help="the data are a function of it")
    _common(p, dataset)
    add_overwrite(p)
    p.set_defaults(func=_synth)
