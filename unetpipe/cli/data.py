"""``unetpipe download``, ``unetpipe convert`` and ``unetpipe synth``: getting the data."""

from __future__ import annotations

import argparse
import logging

from unetpipe.datasets import REGISTRY, convert, download_dataset, provenance
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
    )
    return 0


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
    )
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--val-slices",
        type=int,
        nargs="*",
        default=[],
        help="validation slices (default: the last 20%%)",
    )
    parser.add_argument(
        "--voxel-size", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("Z", "Y", "X")
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("download", help="download a dataset, sha256-verified, resumable")
    p.add_argument("dataset", choices=sorted(REGISTRY))
    p.add_argument("--root", required=True, help="folder to download to (<root>/<dataset>.zip)")
    p.add_argument("--url", help="download from this mirror instead")
    p.add_argument("--sha256", help="expected sha256 instead of the registry's")
    p.set_defaults(func=_download)

    p = subparsers.add_parser("convert", help="a downloaded zip or local folder -> Zarr group")
    p.add_argument("source", choices=[*sorted(REGISTRY), "local"], help="where the data came from")
    p.add_argument("input", help="the downloaded zip, or a folder (ISBI TIFF/PNG or CTC layout)")
    p.add_argument("out", help="the Zarr group to write, e.g. results/isbi2012/data.zarr")
    p.add_argument("--name", help="dataset name recorded in the group (default: source)")
    p.add_argument("--url", help="the URL the archive came from (recorded)")
    p.add_argument("--sha256", help="the expected sha256 (recorded)")
    _common(p)
    p.set_defaults(func=_convert)

    p = subparsers.add_parser("synth", help="write the built-in synthetic EM-like dataset")
    p.add_argument("out", help="the Zarr group to write, e.g. results/synthetic/data.zarr")
    p.add_argument("--name", default="synthetic", help="dataset name recorded in the group")
    p.add_argument("--n-slices", type=int, default=12, help="labelled slices")
    p.add_argument("--shape", type=int, nargs=2, default=[384, 384], metavar=("Y", "X"))
    p.add_argument("--test-slices", type=int, default=2, help="slices of the test volume")
    p.add_argument("--test-shape", type=int, nargs=2, default=[1024, 1024], metavar=("Y", "X"))
    p.add_argument("--cell-size", type=float, default=40.0, help="mean cell diameter, pixels")
    p.add_argument("--membrane-width", type=float, default=3.0, help="membrane thickness, pixels")
    p.add_argument("--noise", type=float, default=0.08, help="noise std (intensities 0..1)")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(func=_synth)
