"""The tiny pipeline on a real (throwaway, single-node) SLURM cluster with the SLURM profile: every
rule a SLURM job, partitions picked by the profile's partitions.yaml, training asking for a GPU."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from .conftest import SLURM_PROFILE, TINY, check, snakemake

# Status checks every 2 s instead of the profile's cluster-friendly pace; no job asks for more CPUs
# than the test node has (a job that cannot fit would wait in the queue forever).
FAST = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]
SMALL = ["--max-threads", str(min(os.cpu_count() or 1, 2))]


def sbatch_lines(log: str) -> dict[str, list[str]]:
    """The sbatch command lines of each rule's jobs, by rule name."""
    lines: dict[str, list[str]] = {}
    for match in re.finditer(
        r"sbatch call: .*--comment '?rule_(\w+?)(?:_wildcards_\S*)?'? .*", log
    ):
        lines.setdefault(match[1], []).append(match[0])
    return lines


@pytest.mark.slow
def test_tiny_pipeline_on_slurm_with_a_gpu_for_training(slurm_cluster, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["train"].update(iterations=20, val_every=10, checkpoint_every=10, device="auto")
    config["resources"] = {"train": {"gpu_model": "fake"}}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))

    args = ["--workflow-profile", str(SLURM_PROFILE), *FAST, *SMALL, "--verbose"]
    log = check(snakemake(tmp_path, *args, configfile=configfile, timeout=600))

    jobs = sbatch_lines(log)
    assert set(jobs) == {
        "synth",
        "weights",
        "augment",
        "train",
        "predict",
        "segment",
        "evaluate",
        "report",
    }
    assert len(jobs["augment"]) == 2, "one job per shard"
    (train,) = jobs["train"]
    assert " -p gpu " in train and "--gpus=fake:1" in train
    for rule in ("synth", "weights", "augment", "segment", "evaluate", "report"):
        assert all(" -p cpu " in line and "--gpus" not in line for line in jobs[rule]), rule
    run = Path(tmp_path / "results/tiny/tiny")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["results"]) == {"val", "test"}
    assert list((run / "report").glob("*.png"))
