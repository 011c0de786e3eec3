"""``unetpipe export``: a trained run's network for other tools (a bioimage.io model package)."""

from __future__ import annotations

import argparse

from unetpipe.bioimageio import EXPORT_DEFAULTS, export_bioimageio
from unetpipe.cli import add_overwrite


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained run's network (--bioimageio: a bioimage.io model package)",
        description=(
            "Package RUN_DIR/model.pt for ilastik, deepImageJ, QuPath, BiaPy and napari "
            "(bioimage.io model format 0.5); the package is kept only when bioimageio.core's "
            "model test passes."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder results/<dataset>/<run>")
    parser.add_argument(
        "--bioimageio",
        metavar="OUT.zip",
        required=True,
        help="write the bioimage.io model package to this .zip file",
    )
    parser.add_argument(
        "--data",
        help="the dataset's data.zarr (test input, training data in the README; "
        "default: RUN_DIR/../data.zarr when present)",
    )
    parser.add_argument("--name", help="model name (default: 'U-Net <dataset> <run>')")
    parser.add_argument("--description", help="one-paragraph description (default: generated)")
    parser.add_argument(
        "--author",
        action="append",
        default=[],
        metavar="NAME",
        help="an author's name (repeat for several)",
    )
    parser.add_argument(
        "--license",
        default=EXPORT_DEFAULTS["license"],
        help="SPDX license identifier of the weights (default: %(default)s)",
    )
    parser.add_argument(
        "--tag", action="append", default=[], help="an extra tag (repeat for several)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    add_overwrite(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = {
        "name": args.name,
        "description": args.description,
        "authors": [{"name": name} for name in args.author],
        "license": args.license,
        "tags": args.tag,
    }
    result = export_bioimageio(
        args.run_dir,
        args.bioimageio,
        cfg,
        data=args.data,
        threads=args.threads,
        overwrite=args.overwrite,
    )
    print(f"{args.bioimageio}: bioimage.io model test {result['status']}")
    return 0
