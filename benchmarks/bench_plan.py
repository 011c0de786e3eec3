"""Planning a connectome-sized prediction without computing it: for a 10^12-voxel volume, the task
graph, scheduler memory, time to build and submit, Zarr chunks and resume markers.

For each network (the paper's 2D U-Net at the default 4 GB budget: blocks (1, 1440, 1440) of a
z-chunk-1 volume; a 3D U-Net, depth 4, base 32: 3D blocks) on a SIZE^3 uint8 volume chunked
(1, 1024, 1024):

1. The plan (exact counts, from ``predict_zarr``'s own planning functions): blocks = output
   chunks, tasks (batches of blocks), marker store chunks and bytes; the same for SIZE x 10.
2. Measured at full size: creating the partial output and its marker store (Zarr metadata only),
   generating every batch, and submitting every task through a real distributed scheduler
   (LocalCluster, one worker) with a task that returns at once, through ``predict_zarr``'s own
   submission loop (a window of tasks in flight): wall time, tasks/s, the most tasks the
   scheduler held, peak RSS growth of the process that runs the scheduler.
3. The former design, measured on PART blocks and scaled linearly (projected): one dask.delayed
   task per block (build time, memory), submitted all at once (client.compute), the list of
   every block at start, and one marker file per block listed at start.

    python benchmarks/bench_plan.py                  # 10,000^3 (several minutes on 2 cores)
    python benchmarks/bench_plan.py --size 2000 --part 2000
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import psutil
import torch
import zarr
from distributed import Client, LocalCluster

from unetpipe.model import UNet
from unetpipe.predict import DEFAULT_MEMORY_GB
from unetpipe.predict.blocks import create_partial
from unetpipe.predict.executors import run_batches
from unetpipe.predict.plan import BlockPlan, Job, block_shape
from unetpipe.predict.tiles import Pass, Views, largest_tile
from unetpipe.tiling import Geometry

NETS = {
    "2D paper net (base 64, depth 5)": {"base_channels": 64, "depth": 5},
    "3D U-Net (base 32, depth 4)": {"base_channels": 32, "depth": 4, "dims": 3},
}


def plan(net: dict[str, Any], size: int, memory_gb: float) -> dict[str, Any]:
    """Blocks, batches and counts of ``predict_zarr`` for a size^3 volume (no model weights)."""
    with torch.device("meta"):
        model = UNet(**net)
    geometry = Geometry.of(model)
    shape = (size,) * 3
    max_tile = largest_tile(model, None, 1, memory_gb, shape)
    block = block_shape(shape, geometry.dims, max_tile, geometry)
    blocks = BlockPlan.of(shape, block)
    grid, batch = blocks.grid, blocks.batch
    tasks = math.prod(math.ceil(g / b) for g, b in zip(grid, batch, strict=True))
    return {
        "model": model,
        "shape": shape,
        "tile": max_tile,
        "block": block,
        "grid": grid,
        "batch": batch,
        "blocks": blocks.blocks,
        "tasks": tasks,
        "input_chunks": size * math.ceil(size / 1024) ** 2,
    }


def make_job(folder: Path, p: dict[str, Any]) -> Job:
    """The volume (metadata only), the partial output and its marker store, as predict_zarr
    makes them; returns the job its tasks would get."""
    source = zarr.create_array(
        str(folder / "raw.zarr"), shape=p["shape"], chunks=(1, 1024, 1024), dtype="uint8"
    )
    job = Job(
        model_path=str(folder / "model.pt"),
        source=source,
        target=str(folder / "out.zarr.partial"),
        geometry=Geometry.of(p["model"]),
        plan=BlockPlan.of(p["shape"], p["block"]),
        max_tile=p["tile"],
        mirror="reflect",
        views=Views(False, (), p["shape"]),
        dtype="float16",
        device="auto",
        run=Pass(1, "float32", "contiguous"),  # precision and format: the plan depends on neither
    )
    create_partial(Path(job.target), {"plan": "only"}, 2, job)
    return job


def returns_at_once(job: Job, batch: tuple[int, int, int]) -> dict[str, Any]:
    """A task of the plan that computes nothing: its block count, as predict_batch reports."""
    spans = [
        min((i + 1) * b, g) - i * b
        for i, b, g in zip(batch, job.plan.batch, job.plan.grid, strict=True)
    ]
    return {"blocks": math.prod(spans), "computed": 0, "worker": "plan"}


class Peak:
    """Samples the process RSS and the scheduler's task count every 20 ms while running."""

    def __init__(self, scheduler: Any = None) -> None:
        self.scheduler, self.rss, self.tasks = scheduler, 0, 0
        self.base = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.rss = max(self.rss, psutil.Process().memory_info().rss - self.base)
            if self.scheduler is not None:
                self.tasks = max(self.tasks, len(self.scheduler.tasks))
            time.sleep(0.02)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def measure_batched(folder: Path, p: dict[str, Any], part: int) -> dict[str, Any]:
    """The design of predict_zarr: every batch through its submission loop."""
    figures: dict[str, Any] = {}
    figures["partial_s"], job = timed(lambda: make_job(folder, p))
    figures["batches_s"], _ = timed(lambda: sum(1 for _ in job.plan.batches()))
    with cluster() as (client, scheduler):
        executor = client.get_executor(pure=False)
        slots = sum(client.nthreads().values())
        with Peak(scheduler) as peak:
            seconds, totals = timed(
                lambda: run_batches(executor, returns_at_once, job, slots, False)
            )
    assert totals["blocks"] == p["blocks"], totals
    return {**figures, "submit_s": seconds, "submit_rss": peak.rss, "submit_tasks": peak.tasks}


def measure_former(folder: Path, p: dict[str, Any], part: int) -> dict[str, Any]:
    """The former design on ``part`` blocks: a delayed task and a marker file per block, and
    the list of every block; scaled linearly to the whole volume."""
    job = make_job(folder, p)
    part = min(part, p["blocks"])
    indices = list(itertools.islice(itertools.product(*map(range, p["grid"])), part))
    build_s, tasks = timed(lambda: [delayed_block(job, index) for index in indices])
    build_bytes = traced(lambda: [delayed_block(job, index) for index in indices])
    with cluster() as (client, scheduler), Peak(scheduler) as peak:
        compute_s, _ = timed(lambda: client.gather(client.compute(tasks)))
    list_s, _ = timed(lambda: list(itertools.product(*map(range, p["grid"]))))
    list_bytes = traced(lambda: list(itertools.product(*map(range, p["grid"]))))
    done = folder / "done"
    done.mkdir()
    for index in indices:
        (done / ".".join(map(str, index))).touch()
    scan_s, _ = timed(lambda: {tuple(map(int, f.name.split("."))) for f in done.iterdir()})
    scale = p["blocks"] / part
    return {
        "old_part": part,
        "old_build_s": build_s * scale,
        "old_build_bytes": build_bytes * scale,
        "old_submit_s": compute_s * scale,
        "old_submit_rss": peak.rss * scale,
        "old_submit_tasks": peak.tasks,
        "old_list_s": list_s,
        "old_list_bytes": list_bytes,
        "old_scan_s": scan_s * scale,
    }


@contextlib.contextmanager
def cluster() -> Iterator[tuple[Client, Any]]:
    """A LocalCluster whose scheduler runs in this process (one worker process, 2 threads)."""
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as local,
        Client(local) as client,
    ):
        yield client, local.scheduler


def child(name: str, design: str, size: int, memory_gb: float, part: int) -> None:
    """One measurement in a fresh process (RSS growth is not blurred by an earlier one)."""
    measure = {"batched": measure_batched, "former": measure_former}[design]
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), plan(NETS[name], size, memory_gb), part)))


def returns_one(job: Job, index: tuple[int, int, int]) -> tuple[int, int, int]:
    """The former design's task of one block, computing nothing."""
    return index


def delayed_block(job: Job, index: tuple[int, int, int]) -> Any:
    """The former design's graph node of one block (``dask.delayed(_predict_block)(job, i)``)."""
    return dask.delayed(returns_one, pure=False)(job, index)


def traced(function: Callable[[], Any]) -> int:
    """Bytes allocated by ``function``'s result (tracemalloc: slow, so never timed with it)."""
    tracemalloc.start()
    result = function()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del result
    return size


def size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def table(p: dict[str, Any], big: dict[str, Any], f: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows: what, at SIZE^3, at (10 SIZE)^3, how known."""
    part = f"projected from {f['old_part']:,} blocks"
    return [
        ("blocks = output chunks", f"{p['blocks']:,}", f"{big['blocks']:,}", "exact"),
        (
            "input chunks (1, 1024, 1024)",
            f"{p['input_chunks']:,}",
            f"{big['input_chunks']:,}",
            "exact",
        ),
        ("tasks, former design (one per block)", f"{p['blocks']:,}", f"{big['blocks']:,}", "exact"),
        ("tasks, batched", f"{p['tasks']:,}", f"{big['tasks']:,}", "exact"),
        ("marker files, former design", f"{p['blocks']:,}", f"{big['blocks']:,}", "exact"),
        ("marker store chunks (one per task)", f"{p['tasks']:,}", f"{big['tasks']:,}", "exact"),
        ("marker store bytes", size(8 * p["blocks"]), size(8 * big["blocks"]), "exact"),
        ("create partial output + marker store", f"{f['partial_s']:.2f} s", "", "measured"),
        ("generate every batch", f"{f['batches_s']:.3f} s", "", "measured"),
        (
            "submit + run every task (no-op), batched",
            f"{f['submit_s']:.0f} s ({p['tasks'] / f['submit_s']:.0f} tasks/s)",
            "",
            "measured",
        ),
        ("tasks held by the scheduler at once, batched", f"{f['submit_tasks']:,}", "", "measured"),
        ("scheduler process RSS growth, batched", size(f["submit_rss"]), "", "measured"),
        (
            "build one delayed per block, former",
            f"{f['old_build_s']:.0f} s, {size(f['old_build_bytes'])}",
            "",
            part,
        ),
        ("tasks held by the scheduler at once, former", f"{p['blocks']:,}", "", "exact"),
        (
            "submit + run them at once, former",
            f"{f['old_submit_s']:.0f} s, RSS +{size(f['old_submit_rss'])}",
            "",
            part,
        ),
        (
            "list every block at start, former",
            f"{f['old_list_s']:.2f} s, {size(f['old_list_bytes'])}",
            "",
            "measured",
        ),
        ("list one marker file per block, former", f"{f['old_scan_s']:.1f} s", "", part),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="volume edge (voxels)")
    parser.add_argument("--memory-gb", type=float, default=DEFAULT_MEMORY_GB)
    parser.add_argument("--part", type=int, default=5_000, help="blocks of the former design")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.size, args.memory_gb, args.part)
        return
    print(f"{args.size}^3 = {args.size**3:.1e} voxels; shared 2-core machine, timings noisy")
    for name, net in NETS.items():
        figures: dict[str, Any] = {}
        for design in ("batched", "former"):
            options = ["--size", str(args.size), "--memory-gb", str(args.memory_gb)]
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    design,
                    *options,
                    "--part",
                    str(args.part),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            figures.update(json.loads(out.stdout.splitlines()[-1]))
        p, big = plan(net, args.size, args.memory_gb), plan(net, args.size * 10, args.memory_gb)
        print(f"\n{name}: tile {p['tile']}, block {p['block']}, batch {p['batch']}")
        print(f"| | {args.size:,}^3 | {args.size * 10:,}^3 | |")
        print("|---|---|---|---|")
        for row in table(p, big, figures):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
