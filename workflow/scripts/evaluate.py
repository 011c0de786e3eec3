"""Rule evaluate: metrics.json of the run (unetpipe.report.evaluate_run)."""

from pathlib import Path

from unetpipe.log import setup_logging
from unetpipe.report import evaluate_run

snakemake = globals()["snakemake"]
setup_logging(snakemake.log[0])
arrays = snakemake.params.arrays
evaluate_run(
    Path(snakemake.input.group).parent,
    dict(zip(arrays, snakemake.input.predictions, strict=True)),
    dict(zip(arrays, snakemake.input.segmentations, strict=True)),
    snakemake.output[0],
    snakemake.params.cfg,
)
