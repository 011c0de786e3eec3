"""Rule report: figures and summary of the run (unetpipe.report.write_report)."""

from pathlib import Path

from unetpipe.log import logged
from unetpipe.report import write_report
from unetpipe.splits import rule_split

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule report"):
    data = Path(snakemake.input.group).parent
    write_report(
        snakemake.input.metrics,
        data,
        snakemake.input.predictions,
        snakemake.input.segmentation,
        snakemake.input.log,
        snakemake.output[0],
        snakemake.params.cfg,
        rule_split(data, snakemake.params.split),
    )
