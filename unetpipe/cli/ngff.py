"""``unetpipe tiff``: an OME-Zarr image or label image as an ImageJ hyperstack TIFF for Fiji."""

from __future__ import annotations

import argparse

from unetpipe.cli import add_overwrite
from unetpipe.ngff import write_tiff


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tiff",
        help="write predictions or a segmentation as an ImageJ hyperstack TIFF (Fiji)",
        description="Axes ZCYX with pixel size and z spacing; written one plane at a time.",
    )
    parser.add_argument("image", help="OME-Zarr image or label image (or a Zarr array)")
    parser.add_argument("output", help="TIFF file to write, e.g. cells.tif")
    parser.add_argument("--level", type=int, default=0, help="multiscale level (0 = full size)")
    add_overwrite(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    write_tiff(args.image, args.output, args.level, overwrite=args.overwrite)
    return 0
