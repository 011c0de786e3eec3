"""Rule evaluate: metrics.json of the run (unetpipe.evaluate.evaluate_run)."""

from pathlib import Path

from unetpipe.evaluate import evaluate_run
from unetpipe.log import logged
from unetpipe.splits import rule_split

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule evaluate"):
    data = Path(snakemake.input.group).parent
    arrays = snakemake.params.arrays
    evaluate_run(
        data,
        dict(zip(arrays, snakemake.input.predictions, strict=True)),
        dict(zip(arrays, snakemake.input.segmentations, strict=True)),
        snakemake.output[0],
        snakemake.params.cfg,
        rule_split(data, snakemake.params.split),
    )
