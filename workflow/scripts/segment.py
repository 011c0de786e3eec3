"""Rule segment: cell probabilities to uint32 instances (unetpipe.segment.segment_stage), with
segment.tune the post-processing fixed first on the training slices of the run's split (gold
truth, or with segment.tune.silver_truth silver truth too)."""

from pathlib import Path

from unetpipe.config import run_settings
from unetpipe.log import logged
from unetpipe.sections import SegmentConfig
from unetpipe.segment import segment_stage
from unetpipe.splits import rule_split

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule segment"):
    cfg = SegmentConfig.from_mapping(
        {**snakemake.params.cfg, **run_settings("segment", snakemake.config["segment"])}
    )
    data, tune = Path(snakemake.input.group).parent, cfg.tune.enabled
    segment_stage(
        snakemake.input.predictions,
        snakemake.output[0],
        cfg,
        snakemake.threads,
        data,
        rule_split(data, snakemake.params.split) if tune else None,
        tune_predictions=snakemake.input.raw_predictions if tune else None,
        image=data / snakemake.wildcards.array,
    )
