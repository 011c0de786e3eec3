"""Rule crossval: every fold's scores and their mean and spread (unetpipe.evaluate)."""

from unetpipe.evaluate import summarize_folds
from unetpipe.log import logged

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule crossval"):
    summarize_folds(
        dict(zip(snakemake.params.folds, snakemake.input, strict=True)),
        snakemake.output.json,
        snakemake.output.table,
    )
