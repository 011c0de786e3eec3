"""``unetpipe predict``: overlap-tile inference of a Zarr volume (Fig. 2)."""

from __future__ import annotations

import argparse

from unetpipe.cli import add_overwrite
from unetpipe.config import choices, defaults
from unetpipe.predict import OUTPUT_DTYPES, SCHEDULERS, predict_stage


def register(subparsers: argparse._SubParsersAction) -> None:
    settings = defaults("predict")
    parser = subparsers.add_parser(
        "predict",
        help="predict class probabilities of a (z, y, x) stack: TIFF, Zarr or OME-Zarr",
        description=(
            "Overlap-tile inference with Dask into an OME-Zarr image (axes, voxel size, pyramid). "
            "The output appears only when complete; a killed "
            "run resumes when restarted, keeping the finished blocks whose input is unchanged. "
            "Only --mirror, --tta, --dtype and --precision change the result; the other options "
            "are run settings."
        ),
    )
    parser.add_argument("model", help="exported model (model.pt)")
    parser.add_argument(
        "input",
        help="a TIFF stack, a Zarr array (e.g. results/demo/data.zarr/test) or an OME-Zarr image",
    )
    parser.add_argument(
        "output",
        help="OME-Zarr image to write (classes, z, y, x), e.g. out.ome.zarr; outside the input",
    )
    parser.add_argument(
        "--tile",
        type=int,
        nargs="+",
        help="largest input tile, a valid extent or one per axis (default: fit --memory-gb)",
    )
    parser.add_argument(
        "--memory-gb",
        type=float,
        default=settings["memory_gb"],
        help="GiB for one forward pass; sets the default tile (default: %(default)s)",
    )
    parser.add_argument(
        "--block",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="output block = Zarr chunk, multiples of 2^(depth-1), Z = 1 for a 2D net "
        "(default: whole tiles spanning at least 1024 px per axis in 2D, one tile in 3D)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=settings["batch_size"],
        help="tiles per forward pass; helps on GPU (default: %(default)s)",
    )
    parser.add_argument(
        "--mirror",
        choices=choices("predict", "mirror"),
        default=settings["mirror"],
        help="context past the border, numpy's pad mode (default: %(default)s)",
    )
    parser.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    parser.add_argument(
        "--dtype",
        choices=OUTPUT_DTYPES,
        default=settings["dtype"],
        help="stored probabilities; uint8 stores round(255 p) (default: %(default)s)",
    )
    parser.add_argument(
        "--precision",
        choices=choices("predict", "precision"),
        default=settings["precision"],
        help="the network's precision: auto = bfloat16 on a GPU or a CPU with native bfloat16 "
        "(AMX, AVX512-BF16), else float32 (float16 where a GPU lacks bfloat16); float16 only on "
        "CUDA (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default=settings["device"],
        help="auto (each worker's GPU if it has one), cpu, cuda or cuda:N (default: %(default)s)",
    )
    parser.add_argument(
        "--scheduler",
        choices=[s for s in SCHEDULERS if s != "slurm"],  # SLURM workers: the workflow's
        default=settings["scheduler"],
        help="threads in this process, a local Dask cluster, or an existing scheduler "
        "(--address); SLURM workers: the workflow's predict.scheduler (default: %(default)s)",
    )
    parser.add_argument("--address", help="scheduler address for --scheduler address")
    parser.add_argument(
        "--n-workers",
        type=int,
        default=settings["n_workers"],
        help="concurrent tasks (threads) or worker processes (local) (default: %(default)s)",
    )
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        help="torch threads (threads) or threads per worker process (local)",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    add_overwrite(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    keys = ["memory_gb", "block", "batch_size", "mirror", "tta", "dtype", "precision", "device"]
    keys += ["scheduler", "address", "n_workers", "threads_per_worker", "progress"]
    cfg = {key: getattr(args, key) for key in keys}
    cfg["tile"] = args.tile[0] if args.tile and len(args.tile) == 1 else args.tile
    predict_stage(args.model, args.input, args.output, cfg, overwrite=args.overwrite)
    return 0
