"""Rule report: figures and summary of the run (unetpipe.report.write_report)."""

from pathlib import Path

from unetpipe.log import setup_logging
from unetpipe.report import write_report

snakemake = globals()["snakemake"]
setup_logging(snakemake.log[0])
write_report(
    snakemake.input.metrics,
    Path(snakemake.input.group).parent,
    snakemake.input.predictions,
    snakemake.input.segmentation,
    snakemake.input.log,
    snakemake.output[0],
    snakemake.params.cfg,
)
