"""Dask workers as real SLURM jobs (dask-jobqueue) on the throwaway single-node cluster: blocks
computed on two worker jobs, one of them cancelled with scancel mid-run, and the predict rule
with ``predict.scheduler: slurm`` under the SLURM profile. The output must equal a threaded run's,
bit for bit: the scheduler is a run setting."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
import zarr

from unetpipe.model import UNet, save_model
from unetpipe.ngff import open_image
from unetpipe.predict import predict_zarr

from .conftest import SLURM_PROFILE, TINY, check, snakemake
from .test_slurm import FAST, SMALL

RUN = Path("results/tiny/tiny")


def worker_options(logs: Path) -> dict[str, Any]:
    """One CPU and 2 GB per worker job on the test node's ``cpu`` partition; the scheduler and
    the workers talk over the loopback interface (a real cluster names its network, e.g. ib0)."""
    return {
        "queue": "cpu",
        "cores": 1,
        "memory": "2GB",
        "walltime": "00:10:00",
        "interface": "lo",
        "log_directory": str(logs),
    }


def registered_jobs(logs: Path) -> list[str]:
    """SLURM job ids of the worker jobs that have connected to the scheduler (from their logs)."""
    return sorted(
        re.fullmatch(r"unetpipe-predict-(\d+)\.err", log.name)[1]
        for log in logs.glob("unetpipe-predict-*.err")
        if "Registered to:" in log.read_text()
    )


def jobs_that_computed(workers: dict[str, int]) -> set[str]:
    """SLURM job ids among predict_zarr's workers that computed at least one block."""
    return {re.search(r"SLURM job (\d+)", name)[1] for name, n in workers.items() if n > 0}


def finished_blocks(partial: Path) -> int:
    markers = partial / ".done"
    if not (markers / "zarr.json").is_file():
        return 0
    return int(np.count_nonzero(zarr.open_array(str(markers), mode="r")[:]))


@pytest.mark.slow
def test_slurm_workers_survive_a_cancelled_job(slurm_cluster, tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    save_model(model, UNet(base_channels=4, depth=3).eval(), normalization={"mean": 128, "std": 50})
    raw = zarr.create_array(str(tmp_path / "raw.zarr"), shape=(40, 60, 60), dtype="uint8")
    raw[:] = np.random.default_rng(0).integers(0, 256, size=raw.shape, dtype=np.uint8)
    blocks = 40 * 3 * 3  # tile 60 predicts 20 px, a block each: 360 blocks, one per task
    block = (1, 20, 20)
    predict_zarr(
        model,
        raw,
        tmp_path / "threads.zarr",
        tile=60,
        block=block,
        threads_per_worker=1,
        progress=False,
    )

    logs, output = tmp_path / "dask-logs", tmp_path / "slurm.zarr"
    partial = tmp_path / "slurm.zarr.partial"
    cancel: dict[str, Any] = {}

    def cancel_a_worker_mid_run() -> None:
        """Once both worker jobs have connected and blocks have been written since, scancel one."""
        deadline = time.monotonic() + 120
        while len(registered_jobs(logs)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        started = finished_blocks(partial)
        while finished_blocks(partial) < started + 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        cancel["jobs"] = registered_jobs(logs)
        cancel["finished"] = finished_blocks(partial)
        subprocess.run(["scancel", cancel["jobs"][0]], check=True, timeout=30)

    watcher = threading.Thread(target=cancel_a_worker_mid_run, daemon=True)
    watcher.start()
    result = predict_zarr(
        model,
        raw,
        output,
        tile=60,
        block=block,
        scheduler="slurm",
        n_workers=2,
        slurm=worker_options(logs),
        progress=False,
    )
    watcher.join(timeout=10)
    jobs = cancel["jobs"]
    assert len(jobs) == 2 and cancel["finished"] < blocks, "the run ended before the cancel"
    assert "CANCELLED" in (logs / f"unetpipe-predict-{jobs[0]}.err").read_text()

    assert result["blocks"] == blocks and result["computed"] + result["reused"] == blocks
    assert jobs_that_computed(result["workers"]) == set(jobs)  # both jobs computed blocks
    assert np.array_equal(
        open_image(output, "czyx")[:],
        open_image(tmp_path / "threads.zarr", "czyx")[:],
    )


@pytest.mark.slow
def test_predict_rule_with_slurm_workers_under_the_slurm_profile(
    slurm_cluster, tiny_run, tmp_path, caplog
):
    """The tiny run's predict rule again, as a SLURM job that starts two Dask worker jobs; small
    blocks (a run setting) give both workers something to do."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    logs = tmp_path / "dask-logs"
    config = yaml.safe_load(TINY.read_text())
    block = [1, 16, 16]
    config["predict"].update(
        scheduler="slurm", n_workers=2, block=block, slurm=worker_options(logs), progress=False
    )
    config["resources"] = {"predict": {"threads": 1, "mem_mb": 2000}}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    target = str(RUN / "predictions" / "test.zarr")

    args = ["--workflow-profile", str(SLURM_PROFILE), *FAST, *SMALL, "--verbose"]
    log = check(
        snakemake(
            workdir, target, *args, "--forcerun", "predict", configfile=configfile, timeout=300
        )
    )
    assert re.search(r"sbatch call: .*rule_predict", log)
    assert not re.search(r"rule (train|segment|evaluate|report):", log)

    rule_log = (workdir / "logs/tiny/tiny/predict_test.log").read_text()
    per_worker = re.search(r"blocks computed per worker: (\{.*\})", rule_log)[1]
    workers = yaml.safe_load(per_worker)
    assert len(jobs_that_computed(workers)) == 2, rule_log[-2000:]
    assert len(list(logs.glob("unetpipe-predict-*.err"))) == 2
    # The reference runs on one thread, as each worker job does: in float32 torch computes a 1x1
    # convolution (the network's last layer) by another algorithm on one thread than on several.
    # The memory format (and in reduced precision the tile) the rule's job measured is kept in
    # the cache of measured choices, which the job shares with this process: the reference reads
    # it there and runs the same passes.
    reference = tmp_path / "threads.zarr"
    data = workdir / "results/tiny/data.zarr/test"
    model = workdir / RUN / "model.pt"
    with caplog.at_level(logging.INFO, logger="unetpipe"):
        predict_zarr(model, data, reference, block=block, threads_per_worker=1, progress=False)
    assert "measured on this machine on" in caplog.text, caplog.text[-2000:]
    assert np.array_equal(
        open_image(workdir / target, "czyx")[:],
        open_image(reference, "czyx")[:],
    )
