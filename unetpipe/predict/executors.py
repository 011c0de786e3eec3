"""Where the tasks of a volume's prediction run: threads of this process, a Dask LocalCluster, an
existing scheduler or a SLURMCluster (dask-jobqueue), fed a window of tasks at a time so that the
scheduler never holds the whole graph; the model each worker process loads once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from unetpipe.config import choices, section_keys
from unetpipe.model import UNet, load_model
from unetpipe.precision import torch_memory_format, torch_threads
from unetpipe.predict.plan import Job

SCHEDULERS = choices("predict", "scheduler")
WINDOW_PER_SLOT = 4  # tasks in flight per worker thread (at least MIN_WINDOW)
MIN_WINDOW = 64
SLURM_KEYS = section_keys("predict.slurm")

_MODELS: dict[tuple[str, int, str, str], tuple[UNet, dict[str, Any]]] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(path: str, device: str, fmt: str = "contiguous") -> tuple[UNet, dict[str, Any]]:
    """The model, loaded once per worker process (shared by its threads), in memory format
    ``fmt``; the process keeps one model file, in each format asked for."""
    device = resolve_device(device)
    key = (path, Path(path).stat().st_mtime_ns, device, fmt)
    with _MODELS_LOCK:
        if key not in _MODELS:
            model, metadata = load_model(path, device)
            model.to(memory_format=torch_memory_format(fmt, model.config["dims"] + 2))
            for other in [k for k in _MODELS if k[:3] != key[:3]]:
                del _MODELS[other]
            _MODELS[key] = (model, metadata)
        return _MODELS[key]


def resolve_device(device: str) -> str:
    """``auto`` on the worker itself: its GPU when it has one (a SLURM job sees only its own);
    with several, worker ``i`` of a local cluster takes GPU ``i mod count``."""
    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        name = None
    return f"cuda:{name % count}" if isinstance(name, int) and count > 1 else "cuda"


def worker_id() -> str:
    """This worker process as the totals name it: host, process id, SLURM job."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"{socket.gethostname()}:{os.getpid()}" + (f" (SLURM job {job})" if job else "")


def compute(
    task: Callable[[Job, tuple[int, int, int]], dict[str, Any]],
    job: Job,
    scheduler: str,
    n_workers: int,
    threads_per_worker: int | None,
    address: str | None,
    slurm: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Run ``task(job, batch)`` for every batch on the scheduler; the summed counts and timings of
    the tasks."""
    if scheduler == "threads":
        with torch_threads(threads_per_worker), ThreadPoolExecutor(n_workers) as executor:
            return run_batches(executor, task, job, n_workers, progress)
    from distributed import Client

    with _cluster(scheduler, n_workers, threads_per_worker, address, slurm) as target:
        with Client(target) as client:
            if scheduler == "address":
                slots = sum(client.nthreads().values())
            else:
                per_worker = slurm.get("cores", 4) if scheduler == "slurm" else threads_per_worker
                slots = n_workers * (per_worker or 1)
            executor = client.get_executor(pure=False)
            return run_batches(executor, task, job, slots, progress)


def run_batches(
    executor: Executor,
    task: Callable[[Job, tuple[int, int, int]], dict[str, Any]],
    job: Job,
    slots: int,
    progress: bool,
) -> dict[str, Any]:
    """Submit ``task(job, batch)`` for every batch of the job's plan, keeping a window of tasks in
    flight (the scheduler holds that many, whatever the volume); sum the results as they arrive."""
    window = max(MIN_WINDOW, WINDOW_PER_SLOT * slots)
    totals: dict[str, Any] = {"workers": {}}
    pending: set[Future] = set()
    bar = tqdm(total=job.plan.blocks, unit="block", disable=not progress, smoothing=0.05)

    def collect(done: set[Future]) -> None:
        for future in done:
            result = future.result()
            worker = result.pop("worker")
            totals["workers"][worker] = totals["workers"].get(worker, 0) + result["computed"]
            for key, value in result.items():
                totals[key] = totals.get(key, 0) + value
            bar.update(result["blocks"])

    try:
        for batch in job.plan.batches():
            pending.add(executor.submit(task, job, batch))
            if len(pending) >= window:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            collect(done)
    finally:
        for future in pending:
            future.cancel()
        bar.close()
    return totals


@contextlib.contextmanager
def _cluster(
    scheduler: str,
    n_workers: int,
    threads_per_worker: int | None,
    address: str | None,
    slurm: dict[str, Any],
) -> Iterator[Any]:
    """The scheduler address, a LocalCluster or a SLURMCluster (closed afterwards)."""
    if scheduler == "address":
        if not address:
            raise ValueError("scheduler 'address' needs predict.address (tcp://host:port)")
        yield address
        return
    if scheduler == "local":
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker or 1, processes=True
        )
    else:
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster(**slurm_cluster_options(slurm))
        cluster.scale(jobs=n_workers)
    with cluster:
        yield cluster


def slurm_cluster_options(slurm: dict[str, Any]) -> dict[str, Any]:
    """dask-jobqueue ``SLURMCluster`` keyword arguments from the ``predict.slurm`` config:
    one worker process per job (one model per GPU)."""
    options = {
        "job_name": "unetpipe-predict",
        "queue": slurm.get("queue"),
        "account": slurm.get("account"),
        "cores": slurm.get("cores", 4),
        "processes": 1,
        "memory": slurm.get("memory", "16GB"),
        "walltime": slurm.get("walltime", "01:00:00"),
        "job_extra_directives": list(slurm.get("job_extra_directives", [])),
        "log_directory": slurm.get("log_directory"),
        "interface": slurm.get("interface"),
    }
    return {k: v for k, v in options.items() if v is not None}
