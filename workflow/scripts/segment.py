"""Rule segment: cell probabilities to uint32 instances (unetpipe.segment), with segment.tune the
post-processing fixed first on the training slices of the run's split (gold truth, or with
segment.tune.silver_truth silver truth too)."""

from pathlib import Path

from unetpipe.config import run_settings
from unetpipe.io import open_data
from unetpipe.log import logged
from unetpipe.segment import segment_zarr
from unetpipe.splits import resolve, tuning

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule segment"):
    cfg = {**snakemake.params.cfg, **run_settings("segment", snakemake.config["segment"])}
    truth = slices = raw = known = None
    if cfg["tune"]["enabled"]:
        group = open_data(Path(snakemake.input.group).parent)
        split = snakemake.params.split
        train = (resolve(group, **split) if split else resolve(group))["train"]
        truth, slices, raw = (
            group["labels"],
            tuning(group.attrs, train, cfg["tune"]["silver_truth"]),
            snakemake.input.raw_predictions,
        )
        known = group["mask"] if "mask" in group else None
    segment_zarr(
        snakemake.input.predictions,
        snakemake.output[0],
        cfg,
        snakemake.threads,
        truth,
        slices,
        raw,
        known,
        image=Path(snakemake.input.group).parent / snakemake.wildcards.array,
    )
