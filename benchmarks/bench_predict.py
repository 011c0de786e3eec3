"""Overlap-tile inference: speed and memory, measured side by side in one run.

1. Throughput per precision (the column): end-to-end ``predict_zarr`` (read, tile, forward,
   write) against the bare forward passes of the very same tiles, on a SIZE^2 image with the
   CPU demo net (base 16, depth 4; ``--depth 5``: the CPU recipe net): today's float32
   channels_last, float32 and bfloat16 in the memory format ``predict_zarr`` measures, and
   bfloat16 with the full-resolution level in float32 (``model.float32_levels: 1``). Per row also
   the CPU seconds of the work around the network (reading, writing, the pyramid) and the ceiling
   it puts on end to end / bare when the network keeps every thread busy.
2. FLOP efficiency: achieved GFLOP/s over the measured peak of two 3x3 convolutions
   (64 -> 64 channels on 256^2, channels_last) in the row's precision (benchmarks/peak.py),
   for the net in 1 and the paper's width in 3.
3. Against MONAI's ``sliding_window_inference`` (roi 512, overlap 0.25) with a same-padded U-Net of
   the paper's width (base 64) on a MONAI_SIZE^2 image (skipped when MONAI is absent:
   ``pip install --no-deps monai``).
4. Memory: peak RSS of ``predict_zarr`` when the volume grows 4x (each size in a subprocess),
   read from a Zarr array, an uncompressed TIFF (memory-mapped per read) and a zlib-compressed
   TIFF (strips decoded through tifffile's Zarr store).

    python benchmarks/bench_predict.py                 # full size (several minutes on 2 cores)
    python benchmarks/bench_predict.py --size 1024 --monai-size 512 --mem-size 1024
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import tifffile
import torch
import zarr
from peak import conv_peak, exact_flops

import unetpipe.predict.blocks
from unetpipe.model import UNet, save_model
from unetpipe.ngff import open_image
from unetpipe.precision import autocast, model_in_format, torch_memory_format
from unetpipe.predict import DEFAULT_MEMORY_GB, pass_memory_format, pass_tile, predict_zarr
from unetpipe.predict.plan import Job, block_shape
from unetpipe.predict.tiles import Region, largest_tile
from unetpipe.tiling import Geometry, plan_axis

STATS = {"mean": 128.0, "std": 50.0}
REPEATS = 3  # timed runs, end to end and bare: the best of them (this machine is noisy)


def random_slices(slices: int, size: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(0)
    for _ in range(slices):
        yield rng.integers(0, 256, size=(size, size), dtype=np.uint8)


def make_input(path: Path, slices: int, size: int) -> zarr.Array:
    """A uint8 volume (slices, size, size), chunks of at most 1024^2, written slice by slice."""
    chunk = min(size, 1024)
    array = zarr.create_array(
        str(path), shape=(slices, size, size), chunks=(1, chunk, chunk), dtype="uint8"
    )
    for z, image in enumerate(random_slices(slices, size)):
        array[z] = image
    return array


def make_tiff(path: Path, slices: int, size: int, compression: str | None) -> Path:
    """The same volume as a multi-page TIFF, written page by page."""
    tifffile.imwrite(
        path,
        random_slices(slices, size),
        shape=(slices, size, size),
        dtype=np.uint8,
        photometric="minisblack",
        compression=compression,
    )
    return path


def tiles_of_run(
    model: UNet, shape: tuple[int, ...], max_tile: tuple[int, int]
) -> list[tuple[int, int]]:
    """The tile shapes ``predict_zarr`` runs over a (1, y, x) volume with tiles of at most
    ``max_tile`` (same planning code)."""
    geometry = Geometry.of(model)
    block = block_shape(shape, 2, max_tile, geometry)[1:]
    tiles = []
    for origin_y in range(0, shape[1], block[0]):
        for origin_x in range(0, shape[2], block[1]):
            sizes = (min(block[0], shape[1] - origin_y), min(block[1], shape[2] - origin_x))
            plans = [
                plan_axis(s, t, a) for s, t, a in zip(sizes, max_tile, geometry.axes, strict=True)
            ]
            tiles += [(plans[0].tile, plans[1].tile)] * len(plans[0].starts) * len(plans[1].starts)
    return tiles


def warm_up(model: UNet, tiles: list[tuple[int, int]], precision: str, fmt: str) -> None:
    """One untimed forward per tile shape: oneDNN builds its kernels on first use of a shape."""
    with model_in_format(model, fmt), torch.inference_mode(), autocast("cpu", precision):
        for tile in set(tiles):
            model(torch.zeros(1, 1, *tile).contiguous(memory_format=torch_memory_format(fmt)))


def bare_forward(
    model: UNet, tiles: list[tuple[int, int]], precision: str, fmt: str
) -> tuple[float, int]:
    """Seconds (the best of :data:`REPEATS` runs over the tiles) and FLOPs of the forward passes
    alone (+ float32 soft-max, inference mode)."""
    flops, seconds = 0, math.inf
    with model_in_format(model, fmt), torch.inference_mode():
        for _ in range(REPEATS):
            run = 0.0
            for tile in tiles:
                x = torch.randn(1, 1, *tile).contiguous(memory_format=torch_memory_format(fmt))
                start = time.perf_counter()
                with autocast("cpu", precision):
                    logits = model(x)
                torch.softmax(logits.float(), 1)
                run += time.perf_counter() - start
            seconds = min(seconds, run)
    for tile in set(tiles):
        flops += tiles.count(tile) * exact_flops(model.config, tile)
    return seconds, flops


def predicted(
    folder: Path,
    base: int,
    depth: int,
    size: int,
    memory_gb: float,
    precision: str = "float32",
    memory_format: str = "channels_last",
    tile: str = "budget",
    float32_levels: int | None = None,
) -> tuple[UNet, zarr.Array, list[tuple[int, int]], dict]:
    """A seeded U-Net saved in ``folder``, and ``predict_zarr`` of a size^2 image with it after a
    warm-up on the tiles of that run: (model, image, tiles, predict_zarr's result; its
    ``memory_format`` and ``tile`` are the ones the run used, read back from the output;
    ``measure_seconds`` the one-time measurements of the format and (``tile`` measured) the tile
    before it (cached per process), not in ``seconds``; timed are runs 2 to REPEATS + 1 of the
    process, the best of them, so that one-time costs (the worker's model, thread pools, first
    use of each kernel) are not in it). ``tile``: budget = the largest tile of
    ``memory_gb`` (the former default), measured = chosen by ``predict_zarr``;
    ``float32_levels``: the network's ``model.float32_levels``."""
    folder.mkdir()
    torch.manual_seed(0)
    model = UNet(base_channels=base, depth=depth, float32_levels=float32_levels).eval()
    save_model(folder / "model.pt", model, normalization=STATS)
    array = make_input(folder / "in.zarr", 1, size)
    cap = largest_tile(model, None, 1, memory_gb, (size, size))
    geometry = Geometry.of(model)
    covering = tuple(plan_axis(size, t, a).tile for t, a in zip(cap, geometry.axes, strict=True))
    started = time.perf_counter()
    fmt = memory_format
    if memory_format == "auto":  # the one-time measurements (per process), timed on their own
        fmt = pass_memory_format(model, covering, 1, precision)
    max_tile = cap
    if tile == "measured":
        max_tile = pass_tile(model, (size, size), cap, 1, precision, fmt)
    measure = time.perf_counter() - started
    tiles = tiles_of_run(model, (1, size, size), max_tile)
    warm_up(model, tiles, precision, fmt)
    runs = []
    for name in ("warm.zarr", *(f"out-{i}.zarr" for i in range(REPEATS))):  # once untimed first
        runs.append(
            predict_zarr(
                folder / "model.pt",
                array,
                folder / name,
                tile=None if tile == "measured" else max_tile[0],
                memory_gb=memory_gb,
                precision=precision,
                memory_format=memory_format,
                progress=False,
            )
        )
    result = min(runs[1:], key=lambda run: run["seconds"])
    attrs = open_image(folder / "out-0.zarr", "czyx").attrs
    result["memory_format"], result["tile"] = attrs["memory_format"], attrs["tile"]
    result["measure_seconds"] = measure
    return model, array, tiles, result


def work_around_network(folder: Path, result: dict, precision: str) -> float:
    """CPU seconds (user + system, all threads; the best of :data:`REPEATS`) of ``predict_zarr``
    without its network: the row's run repeated with the network's output of each block stood in
    by the probabilities that run wrote (the same bytes to encode, compress and reduce). A 1-slice
    input (:func:`predicted`): blocks start at z = 0."""
    written = np.asarray(zarr.open_array(str(folder / "out-0.zarr" / "0"))[:], dtype=np.float32)

    def stand_in(model: UNet, job: Job, data: np.ndarray, region: Region) -> np.ndarray:
        box = tuple(slice(o, o + n) for o, n in zip(region.origin, region.size, strict=True))
        return written[(slice(None), slice(0, len(data)), *box)].copy()

    cpu = math.inf
    with mock.patch.object(unetpipe.predict.blocks, "_predict_block", stand_in):
        for i in range(REPEATS):
            before = resource.getrusage(resource.RUSAGE_SELF)
            predict_zarr(
                folder / "model.pt",
                folder / "in.zarr",
                folder / f"around-{i}.zarr",
                tile=result["tile"][0],
                precision=precision,
                memory_format=result["memory_format"],
                progress=False,
            )
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = min(cpu, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return cpu


# (precision, memory format, tile, model.float32_levels) rows of [1]: float32 channels_last at
# the budget's tile first (the baseline: the pipeline before issue 33).
ROWS = [
    ("float32", "channels_last", "budget", None),
    ("float32", "auto", "budget", None),  # predict_zarr measures the tile in reduced precision only
    ("bfloat16", "auto", "budget", None),
    ("bfloat16", "auto", "measured", None),
    ("bfloat16", "auto", "measured", 1),
]


def throughput(
    folder: Path, size: int, base: int, depth: int, memory_gb: float, peaks: dict[str, float]
) -> None:
    pixels = size * size / 1e6
    print(f"[1] throughput, {size}^2, base {base} depth {depth}; ratio to the first row:")
    print(
        f"    {'precision':9s} {'f32 lv':>6s} {'format':22s} {'tile':>14s} {'e2e MPix/s':>10s} "
        f"{'bare MPix/s':>11s} {'bare/e2e':>8s} {'ratio':>6s} {'GFLOP/s':>7s} {'% peak':>6s} "
        f"{'measure s':>9s} {'around s':>8s} {'ceiling':>7s}"
    )
    threads = torch.get_num_threads()
    baseline = None
    for precision, memory_format, tile, levels in ROWS:
        name = f"{precision}-{memory_format}-{tile}-{levels}"
        model, _, tiles, result = predicted(
            folder / name, base, depth, size, memory_gb, precision, memory_format, tile, levels
        )
        fmt = result["memory_format"]
        bare, flops = bare_forward(model, tiles, precision, fmt)
        around = work_around_network(folder / name, result, precision)
        seconds = result["seconds"]
        baseline = baseline or seconds
        achieved = flops / seconds / 1e9
        chosen = f"{fmt} ({'measured' if memory_format == 'auto' else 'fixed'})"
        shown = f"{result['tile'][0]} ({tile})"
        print(
            f"    {precision:9s} {levels or '-':>6} {chosen:22s} {shown:>14s} "
            f"{pixels / seconds:10.2f} {pixels / bare:11.2f} "
            f"{bare / seconds:8.2f} {baseline / seconds:5.2f}x {achieved:7.0f} "
            f"{achieved / peaks[precision]:6.1%} {result['measure_seconds']:9.1f} "
            f"{around:8.2f} {bare / (bare + around / threads):7.2f}",
            flush=True,
        )
    print(f"    blocks {result['block']}; target: bare/e2e >= 0.90, bfloat16 ratio >= 3.0x")
    print(
        f"    around s: CPU seconds of the run without its network (reading, writing, pyramid);"
        f" ceiling: bare/e2e if the network kept all {threads} threads busy and that work "
        "shared them"
    )
    print(
        "[2] 3x3 conv peak (two 64->64 convs on 256^2, channels_last): "
        + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items())
        + "; % peak above = end-to-end GFLOP/s over the peak of the row's precision"
    )


def against_monai(folder: Path, size: int, depth: int, memory_gb: float, peak: float) -> None:
    """float32 both (MONAI's inferer runs what it is given)."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("[3] MONAI comparison skipped: pip install --no-deps monai")
        return
    model, array, tiles, ours = predicted(folder / "paper", 64, depth, size, memory_gb)  # budget
    flops = sum(exact_flops(model.config, t) for t in tiles)
    same = UNet(base_channels=64, depth=depth, padding="same").eval()
    warm_up(same, [(512, 512)], "float32", "channels_last")
    image = torch.from_numpy((array[0].astype(np.float32) - STATS["mean"]) / STATS["std"])
    start = time.perf_counter()
    with torch.inference_mode():
        sliding_window_inference(
            image[None, None].contiguous(memory_format=torch.channels_last),
            roi_size=(512, 512),
            sw_batch_size=1,
            predictor=lambda x: torch.softmax(same(x), 1),
            overlap=0.25,
        )
    monai = time.perf_counter() - start
    print(f"[3] vs MONAI sliding_window_inference, {size}^2, base 64 depth {depth}:")
    print(f"    overlap-tile predict_zarr {ours['seconds']:.1f} s, tiles {sorted(set(tiles))}")
    achieved = flops / ours["seconds"] / 1e9
    print(f"    network {achieved:.0f} GFLOP/s end-to-end = {achieved / peak:.0%} of the 3x3 peak")
    print(f"    MONAI (roi 512, overlap 0.25, same-padded) {monai:.1f} s")
    print(f"    speed-up = {monai / ours['seconds']:.2f}x  (target >= 1.25)")


def peak_rss_child(model_path: str, input_path: str, output_path: str, memory_gb: float) -> None:
    predict_zarr(model_path, input_path, output_path, memory_gb=memory_gb, progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


INPUTS = {
    "zarr": lambda path, n, size: make_input(path.with_suffix(".zarr"), n, size).store.root,
    "tiff": lambda path, n, size: make_tiff(path.with_suffix(".tif"), n, size, None),
    "tiff-zlib": lambda path, n, size: make_tiff(path.with_suffix(".tif"), n, size, "zlib"),
}


def memory(folder: Path, size: int, slices: int, base: int, depth: int, memory_gb: float) -> None:
    torch.manual_seed(0)
    save_model(folder / "mem.pt", UNet(base_channels=base, depth=depth).eval(), normalization=STATS)
    extra = 3 * slices * size * size / 2**20
    print(f"[4] peak RSS, {size}^2 slices, base {base}, {slices} -> {4 * slices} slices")
    print(f"    (the larger stack holds {extra:.0f} MiB more: a whole read would add that)")
    for name, make in INPUTS.items():
        rss = {}
        for n in (slices, 4 * slices):
            source = make(folder / f"{name}-{n}", n, size)
            output = folder / f"{name}-{n}.ome.zarr"
            args = [folder / "mem.pt", source, output, memory_gb]
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", *map(str, args)],
                check=True,
                capture_output=True,
                text=True,
            )
            rss[n] = int(out.stdout.split()[-1]) / 2**20
        small, large = rss[slices], rss[4 * slices]
        growth = large / small - 1
        print(
            f"    {name:9s} {small:.2f} GiB -> {large:.2f} GiB: growth {growth:+.1%}"
            "  (target <= +10%)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="throughput image size")
    parser.add_argument("--monai-size", type=int, default=2048, help="MONAI comparison image size")
    parser.add_argument("--mem-size", type=int, default=4096, help="slice size for the RSS test")
    parser.add_argument("--mem-slices", type=int, default=4, help="slices of the smaller volume")
    parser.add_argument("--base", type=int, default=16, help="demo net width")
    parser.add_argument("--depth", type=int, default=4, help="demo net depth")
    parser.add_argument("--memory-gb", type=float, default=DEFAULT_MEMORY_GB, help="forward budget")
    parser.add_argument("--skip", nargs="*", default=[], choices=["1", "3", "4"])
    parser.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child(*args.rss_child[:3], float(args.rss_child[3]))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (shared machine: noisy)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        peaks = {p: conv_peak(p) for p in ("float32", "bfloat16")}
        if "1" not in args.skip:
            throughput(folder, args.size, args.base, args.depth, args.memory_gb, peaks)
        if "3" not in args.skip:
            against_monai(folder, args.monai_size, 5, args.memory_gb, peaks["float32"])
        if "4" not in args.skip:
            memory(folder, args.mem_size, args.mem_slices, args.base, args.depth, args.memory_gb)


if __name__ == "__main__":
    main()
