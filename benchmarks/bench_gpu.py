"""End-to-end throughput of ``predict_zarr`` on a GPU (or CPU) against the bare network on the very
same tiles, and whether the CPU side of a task (reading, mirroring, normalising, writing) overlaps
the network's work.

1. Bare network: the tiles a ``predict_zarr`` run cuts, as forward passes + softmax on tiles
   already on the device, in batches of ``--batch-size`` (CUDA synchronised), after a warm-up.
2. End to end: ``predict_zarr`` of the same volume (threads scheduler, one worker thread, so one
   model on the device; all blocks in one task, so its reader and writer threads run beside the
   network): MPix/s and the ratio to 1.
3. Overlap, from the task's own timings: wall time of the task against network + reading +
   writing; the share of reading and writing hidden behind the network.

    python benchmarks/bench_gpu.py --device cuda                          # paper net, 8 x 4096^2
    python benchmarks/bench_gpu.py --device cpu --base 16 --depth 4 --slices 2 --size 2048
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_predict import STATS, make_input, tiles_of_run  # a sibling script

from unetpipe.model import UNet, load_model, save_model
from unetpipe.predict import DEFAULT_MEMORY_GB, plan, predict_zarr
from unetpipe.predict.tiles import largest_tile


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(model: UNet, tiles: list[tuple[int, int]], batch_size: int) -> float:
    """Seconds of forward + softmax over ``tiles`` (device-resident inputs, batched per shape)."""
    device = next(model.parameters()).device
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    batches = []
    for shape in sorted(set(tiles)):
        count = tiles.count(shape)
        batches += [(shape, min(batch_size, count - i)) for i in range(0, count, batch_size)]
    with torch.inference_mode():
        for shape, n in {b for b in batches}:  # warm-up: kernels of each shape and batch
            torch.softmax(model(torch.zeros(n, 1, *shape, device=device)), 1)
        inputs = {
            (s, n): torch.randn(n, 1, *s, device=device).contiguous(memory_format=fmt)
            for s, n in set(batches)
        }
        synchronize(device)
        start = time.perf_counter()
        for key in batches:
            torch.softmax(model(inputs[key]), 1)
        synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--base", type=int, default=64, help="network width (paper: 64)")
    parser.add_argument("--depth", type=int, default=5, help="network depth (paper: 5)")
    parser.add_argument("--slices", type=int, default=8, help="slices of the volume")
    parser.add_argument("--size", type=int, default=4096, help="slice edge (pixels)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--memory-gb", type=float, default=DEFAULT_MEMORY_GB)
    parser.add_argument("--threads", type=int, help="torch threads on CPU (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {name}, {torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        save_model(
            folder / "model.pt",
            UNet(base_channels=args.base, depth=args.depth).eval(),
            normalization=STATS,
        )
        model, _ = load_model(folder / "model.pt", str(device))
        shape = (args.slices, args.size, args.size)
        max_tile = largest_tile(model, None, args.batch_size, args.memory_gb, shape[1:])
        tiles = tiles_of_run(model, (1, *shape[1:]), max_tile) * args.slices
        network = bare(model, tiles, args.batch_size)
        volume = make_input(folder / "in.zarr", args.slices, args.size)
        plan.MIN_TASKS = 1  # all blocks in one task: its reader and writer beside the network
        options = dict(device=str(device), batch_size=args.batch_size, tile=max_tile[0])
        predict_zarr(folder / "model.pt", volume, folder / "warm.zarr", progress=False, **options)
        result = predict_zarr(
            folder / "model.pt", volume, folder / "out.zarr", progress=False, **options
        )
    pixels = args.slices * args.size**2 / 1e6
    seconds = result["seconds"]
    print(f"[1] bare network, {len(tiles)} tiles {sorted(set(tiles))}, batch {args.batch_size}:")
    print(f"    {network:.2f} s = {pixels / network:.2f} MPix/s")
    print(f"[2] predict_zarr end to end, {shape}, blocks {result['block']}:")
    ratio = network / seconds
    print(f"    {seconds:.2f} s = {pixels / seconds:.2f} MPix/s = {ratio:.2f} of the bare net's")
    read, write = result["read_seconds"], result["write_seconds"]
    compute, wall = result["compute_seconds"], result["task_seconds"]
    hidden = (read + compute + write - wall) / (read + write) if read + write else 1.0
    print(f"[3] in the task: network {compute:.2f} s, reading {read:.2f} s, writing {write:.2f} s;")
    print(f"    task wall time {wall:.2f} s = {wall / (read + compute + write):.2f} of their sum:")
    print(f"    {min(hidden, 1.0):.0%} of reading + writing hidden behind the network")


if __name__ == "__main__":
    main()
