"""Rule predict: overlap-tile inference of one array of the dataset (unetpipe.predict)."""

from pathlib import Path

from unetpipe.config import run_settings
from unetpipe.log import logged
from unetpipe.predict import predict_stage

snakemake = globals()["snakemake"]
with logged(snakemake.log[0], "rule predict"):
    predict_stage(
        snakemake.input.model,
        Path(snakemake.input.group).parent / snakemake.wildcards.array,
        snakemake.output[0],
        {**snakemake.params.cfg, **run_settings("predict", snakemake.config["predict"])},
        snakemake.threads,
    )
